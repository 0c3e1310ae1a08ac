# Sourced by scripts/test and scripts/bench: installs what is missing, starts a scratch Redis,
# a 3-node Redis Cluster and a scratch Postgres on free loopback ports in a temp dir, exports
# their URLs, and stops them on exit (also on failure). SERVICES_CLUSTER=0 skips the cluster.
# Ports are retried when a server cannot bind. PG_EXTRA_OPTS replaces the tests'
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

# Picks N distinct free loopback ports outside the kernel's ephemeral range, so no outgoing
# connection can take one between the pick and the server's bind. With --bus each port's
# cluster bus (port + 10000) is free too. All sockets stay bound until every port is chosen.
pick_ports() {
  python3 - "$@" <<'PY'
import random, socket, sys
count, bus = int(sys.argv[1]), "--bus" in sys.argv
low, high = map(int, open("/proc/sys/net/ipv4/ip_local_port_range").read().split())
top = 65535 - (10000 if bus else 0)
outside = [p for p in range(10000, top + 1) if not low <= p <= high and not (bus and low <= p + 10000 <= high)]
# A machine whose ephemeral range leaves too little outside it gets ports from anywhere.
candidates = outside if len(outside) >= 1000 else range(10000, top + 1)
held, ports = [], []
while len(ports) < count:
    p = random.choice(candidates)
    try:
        for q in ([p, p + 10000] if bus else [p]):
            s = socket.socket(); s.bind(("127.0.0.1", q)); held.append(s)
        ports.append(p)
    except OSError:
        pass
print(" ".join(map(str, ports)))
PY
}

SCRATCH=$(mktemp -d /tmp/scenehook-services.XXXXXX)
chmod 755 "$SCRATCH"
REDIS_PORT=""
CLUSTER_PORTS=""

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

# Starts redis-server on $1 (extra options after it) and waits until it answers; on failure
# prints the end of its log and stops it, so the caller can try other ports.
start_redis() {
  local port=$1 dir="$SCRATCH/redis-$1"
  shift
  mkdir -p "$dir"
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" \
    --daemonize yes --logfile "$dir/redis.log" "$@" || true
  for _ in $(seq 100); do
    timeout 2 redis-cli -p "$port" ping >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "scripts: redis-server on :$port did not start:" >&2
  tail -n 5 "$dir/redis.log" >&2 || true
  redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
  return 1
}

# A 3-node Redis Cluster (no replicas), to prove every script stays within one slot.
start_cluster() {
  CLUSTER_PORTS=$(pick_ports 3 --bus)
  local port nodes=()
  for port in $CLUSTER_PORTS; do
    start_redis "$port" --cluster-enabled yes \
      --cluster-config-file "$SCRATCH/redis-$port/nodes.conf" || break
    nodes+=("127.0.0.1:$port")
  done
  if [ "${#nodes[@]}" = 3 ] &&
    redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >/dev/null; then
    for _ in $(seq 100); do
      redis-cli -p "${CLUSTER_PORTS%% *}" cluster info | grep -q 'cluster_state:ok' && return 0
      sleep 0.1
    done
  fi
  for port in $CLUSTER_PORTS; do redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true; done
  return 1
}

# Postgres refuses to run as root: the cluster belongs to the postgres user.
start_postgres() {
  PG_PORT=$(pick_ports 1)
  runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$SCRATCH/pg" -l "$SCRATCH/pg/log" -w \
    -o "-p $PG_PORT -k $SCRATCH/pg -c listen_addresses=127.0.0.1 -c max_connections=400 ${PG_EXTRA_OPTS--c fsync=off}" \
    start >/dev/null && return 0
  tail -n 5 "$SCRATCH/pg/log" >&2 || true
  return 1
}

start_standalone() {
  REDIS_PORT=$(pick_ports 1)
  start_redis "$REDIS_PORT"
}

# Runs a start function up to three times (each try picks new ports), then gives up.
up_to_three_tries() {
  local what=$1
  shift
  for _ in 1 2 3; do
    "$@" && return 0
  done
  echo "scripts: no scratch $what after 3 tries" >&2
  exit 1
}

up_to_three_tries Redis start_standalone
# The load benchmark has no use for a cluster and sets SERVICES_CLUSTER=0.
if [ "${SERVICES_CLUSTER:-1}" = 1 ]; then
  up_to_three_tries "Redis Cluster" start_cluster
  read -r seed node2 node3 <<<"$CLUSTER_PORTS"
  export SCENEHOOK_TEST_REDIS_CLUSTER_URL="redis-cluster://127.0.0.1:$seed?node=127.0.0.1:$node2&node=127.0.0.1:$node3"
fi
mkdir -p "$SCRATCH/pg"
chown postgres "$SCRATCH/pg"
runuser -u postgres -- "$PG_BIN/initdb" -D "$SCRATCH/pg" -U postgres -A trust --no-sync >/dev/null
# Its port is picked once the Redis ports are bound, so the two cannot collide.
up_to_three_tries Postgres start_postgres

export SCENEHOOK_TEST_REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
export SCENEHOOK_PG_BIN="$PG_BIN"
export SCENEHOOK_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
cluster_ports=${CLUSTER_PORTS// /,:}
echo "scratch Redis on :$REDIS_PORT, Redis Cluster on :${cluster_ports:-none}, Postgres on :$PG_PORT"
