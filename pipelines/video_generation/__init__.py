"""Video generation (task `video_generation`): class-conditional videos from our pixel-space VideoUNet
(backbones/video_unet.py) trained on MovingDigits, and diffusers video UNets read from disk, with training-free
"seed methods" installed as processors on their temporal attention layers.

- `pipeline`: VideoGenerationPipeline (requests in; MP4 / GIF / PNG grid / tensor out; the training hooks of
  `mtp run`).
- `sampling`: `generate(...)`, DDIM / DPM-Solver++ from diffusers with classifier-free guidance, seeds per sample.
- `writers`: MP4 (PyAV), GIF and PNG-grid writers, atomic.
- `temporal`: find temporal attention layers, swap their processors, stretch position tables.
- `freelong`, `video_infinity`, `animatezero`: the long-video / image-to-video methods.
- `metrics`, `evaluation`: temporal-consistency metrics and the frame-classifier evaluation of generated videos.
"""
