# System packages the test suite needs (sourced by .ci/run; safe to re-run). Each is optional: a test that needs
# one skips with a stated reason where it could not be installed.
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v pg_ctl >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || need+=(postgresql)
if [ ${#need[@]} -gt 0 ] && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}") >/tmp/detoxops-apt.log 2>&1 \
    || echo "warning: could not install ${need[*]} (see /tmp/detoxops-apt.log); dependent tests will skip"
fi
