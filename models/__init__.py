"""FASL model code: backbone, memory bank, FD, ASL heads + NAM, LFE windows."""
