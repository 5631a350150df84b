"""Example rollout plugins for --custom-generate-function-path."""
