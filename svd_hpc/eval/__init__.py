"""The eval stage: the body (evaluate), benchmark presets, their prompts, graders, the sandbox, pass@k scoring."""
