"""The merge's library (the merge stage's body is stages/merge.py): the selection rules (selection), the funnel
counts (funnel) and the spill files (writers)."""
