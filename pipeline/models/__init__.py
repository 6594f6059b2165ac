"""Models: backbones for students and teachers (torchvision, narrow/wide ResNets, DINO/DINOv2 ViTs, timm), the
checkpoint formats teachers arrive in and their strict loading, and this project's own model files."""
