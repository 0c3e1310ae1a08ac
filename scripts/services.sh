# Sourced by scripts/test and scripts/bench: installs what is missing, starts a scratch Redis,
# a 3-node Redis Cluster and a scratch Postgres on free loopback ports in a temp dir, exports
# their URLs, and stops them on exit (also on failure). PG_EXTRA_OPTS replaces the tests'
# `-c fsync=off` (the benchmark keeps fsync on).

set -euo pipefail

need_apt_update=1
apt_install() {
  if [ "$(id -u)" != 0 ]; then
    echo "scripts: $* missing and not root: install it ($*) and rerun" >&2
    exit 1
  fi
  if [ "$need_apt_update" = 1 ]; then
    apt-get update -qq
    need_apt_update=0
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

pg_bin() {
  for dir in /usr/lib/postgresql/*/bin; do
    if [ -x "$dir/initdb" ]; then echo "$dir"; return; fi
  done
}

command -v redis-server >/dev/null || apt_install redis-server
command -v openssl >/dev/null || apt_install openssl
[ -n "$(pg_bin)" ] || apt_install postgresql
PG_BIN=$(pg_bin)

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

SCRATCH=$(mktemp -d /tmp/scenehook-services.XXXXXX)
chmod 755 "$SCRATCH"
REDIS_PORT=$(free_port)
PG_PORT=$(free_port)
# A cluster node also listens on port+10000 (its bus), so both must be free and below 65536.
cluster_port() {
  python3 -c '
import random, socket
while True:
    p = random.randint(20000, 55000)
    try:
        for q in (p, p + 10000):
            s = socket.socket(); s.bind(("127.0.0.1", q)); s.close()
        print(p); break
    except OSError:
        pass'
}
CLUSTER_PORTS="$(cluster_port) $(cluster_port) $(cluster_port)"

stop_services() {
  for port in $REDIS_PORT $CLUSTER_PORTS; do
    redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
  done
  if [ -f "$SCRATCH/pg/postmaster.pid" ]; then
    runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$SCRATCH/pg" -m immediate stop >/dev/null 2>&1 || true
  fi
  rm -rf "$SCRATCH"
}
trap stop_services EXIT

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
  --dir "$SCRATCH" --daemonize yes --logfile "$SCRATCH/redis.log"

# A 3-node Redis Cluster (no replicas), to prove every script stays within one slot.
for port in $CLUSTER_PORTS; do
  mkdir -p "$SCRATCH/cluster-$port"
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --cluster-enabled yes \
    --cluster-config-file "$SCRATCH/cluster-$port/nodes.conf" --dir "$SCRATCH/cluster-$port" \
    --daemonize yes --logfile "$SCRATCH/cluster-$port/redis.log"
done

# Postgres refuses to run as root: the cluster belongs to the postgres user.
mkdir -p "$SCRATCH/pg"
chown postgres "$SCRATCH/pg"
runuser -u postgres -- "$PG_BIN/initdb" -D "$SCRATCH/pg" -U postgres -A trust --no-sync >/dev/null
runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$SCRATCH/pg" -l "$SCRATCH/pg/log" -w \
  -o "-p $PG_PORT -k $SCRATCH/pg -c listen_addresses=127.0.0.1 -c max_connections=400 ${PG_EXTRA_OPTS--c fsync=off}" start >/dev/null

for _ in $(seq 50); do
  redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
  sleep 0.1
done

nodes=""
for port in $CLUSTER_PORTS; do
  for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
  nodes="$nodes 127.0.0.1:$port"
done
# shellcheck disable=SC2086
redis-cli --cluster create $nodes --cluster-replicas 0 --cluster-yes >/dev/null
for _ in $(seq 100); do
  redis-cli -p "${CLUSTER_PORTS%% *}" cluster info | grep -q 'cluster_state:ok' && break
  sleep 0.1
done
set -- $CLUSTER_PORTS

export SCENEHOOK_TEST_REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
export SCENEHOOK_TEST_REDIS_CLUSTER_URL="redis-cluster://127.0.0.1:$1?node=127.0.0.1:$2&node=127.0.0.1:$3"
export SCENEHOOK_PG_BIN="$PG_BIN"
export SCENEHOOK_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
echo "scratch Redis on :$REDIS_PORT, Redis Cluster on :${CLUSTER_PORTS// /,:}, Postgres on :$PG_PORT"
