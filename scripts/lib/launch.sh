# Sourced by the launch scripts. `launch MODULE ARGS...` runs `python -m MODULE ARGS...`:
#   --dry-run among ARGS   print the resolved configuration and placement plan here; nothing starts
#   RAY_ADDRESS set        `ray job submit` to that cluster with a runtime-env YAML (working dir + env vars)
#   otherwise              run on this machine (a local Ray starts)
# RUNTIME_ENV_VARS (an array of NAME=VALUE) is exported locally and written into the runtime env.

launch() {
  local module=$1
  shift
  local arg
  for arg in "$@"; do
    if [ "$arg" = "--dry-run" ]; then
      exec python -m "$module" "$@"
    fi
  done
  if [ -n "${RAY_ADDRESS:-}" ]; then
    local env_yaml
    env_yaml=$(mktemp --suffix .yaml)
    {
      echo "working_dir: ."
      echo "env_vars:"
      for arg in "${RUNTIME_ENV_VARS[@]}"; do echo "  ${arg%%=*}: \"${arg#*=}\""; done
    } > "$env_yaml"
    echo "submitting to $RAY_ADDRESS with runtime env $env_yaml" >&2
    exec ray job submit --address "$RAY_ADDRESS" --runtime-env "$env_yaml" -- \
      python -m "$module" "$@" --ray-address auto
  fi
  for arg in "${RUNTIME_ENV_VARS[@]}"; do export "${arg?}"; done
  exec python -m "$module" "$@"
}
