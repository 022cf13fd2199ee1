"""Video generation (task `video_generation`), still being built: diffusers video UNets run with training-free
"seed methods" installed as processors on their temporal attention layers. This folder holds the pieces so far,
starting with FreeLong's SpectralBlend temporal attention (`freelong`); the pipeline itself and its registry
entry come later.
"""
