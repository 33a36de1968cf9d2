"""The eval's library (the eval stages' body is stages/evaluate.py): benchmark presets and readers, their prompts,
the eval arrays (tasks), graders (grading/, grade), the sandbox and the scores (pass@k, bootstrap)."""
