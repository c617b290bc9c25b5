# tools/deploy/lib.sh — sourced by every deploy script: one way to print, run, probe and fail.
#
# Why one helper: the bootstrap's --dry-run must print EVERY command it would run, and the
# tests run these scripts against a fake `gcloud` on PATH; both need each call to go through
# one place. Commands are printed shell-quoted ("+ gcloud ..."), to stdout in a dry run (the
# printout is the product) and to stderr otherwise (stdout may carry a result, e.g. a digest).
# shellcheck shell=bash

DRY_RUN="${DRY_RUN:-0}"
# The caller's stdout, kept on fd 3: a dry run's printout must reach it even from inside a
# command substitution (read_value's caller captures stdout).
exec 3>&1

die() {
  echo "${0##*/}: ERROR: $*" >&2
  exit 1
}

note() { echo "${0##*/}: $*" >&2; }

_print_cmd() {
  local line
  line="+$(printf ' %q' "$@")"
  if [[ "$DRY_RUN" == 1 ]]; then echo "$line" >&3; else echo "$line" >&2; fi
}

# run CMD...: print, then run unless this is a dry run.
run() {
  _print_cmd "$@"
  [[ "$DRY_RUN" == 1 ]] || "$@"
}

# exists CMD...: a read-only probe (a `describe`). Its output is discarded; a non-zero exit
# means "missing" (a probe that fails for another reason, e.g. no permission, leads to a create
# that then fails loudly). In a dry run nothing is called and everything counts as missing,
# so the printout is the full list of commands a fresh project needs.
exists() {
  _print_cmd "$@"
  [[ "$DRY_RUN" != 1 ]] || return 1
  "$@" >/dev/null 2>&1
}

# read_value CMD...: a read-only query whose stdout is needed (e.g. the project number); in a
# dry run prints the command and answers with the placeholder $READ_PLACEHOLDER.
read_value() {
  _print_cmd "$@"
  if [[ "$DRY_RUN" == 1 ]]; then
    echo "${READ_PLACEHOLDER:-VALUE}"
    return 0
  fi
  "$@"
}

require_env() {
  local var
  for var in "$@"; do
    [[ -n "${!var:-}" ]] || die "$var is not set (a repository variable or the caller's environment)"
  done
}

# render FILE: the descriptor with only the known placeholders substituted; anything else
# with a `$` stays literal (envsubst with an explicit list).
render() {
  # shellcheck disable=SC2016
  envsubst '${IMAGE} ${PROJECT_ID} ${REGION} ${MEDIA_BUCKET}' < "$1"
}

# yaml_get FILE EXPR: one scalar from a YAML file, "" when absent. Works with both yq
# flavours (mikefarah's on GitHub's runners, kislyuk's jq wrapper from Debian).
yaml_get() {
  local v
  v="$(yq -r "$2" "$1")"
  [[ "$v" == null ]] && v=""
  printf '%s' "$v"
}
