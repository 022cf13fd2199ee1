"""3D medical image segmentation: NIfTI cases in (a case folder of modality files, or one 3D/4D file), region
masks out on the input's own grid, sliding-window inference under a memory bound, Dice/HD95 per region."""
