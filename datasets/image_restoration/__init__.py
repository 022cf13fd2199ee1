"""Image restoration data: image reading and writing, MATLAB bicubic resize, paired and HR-only folders."""
