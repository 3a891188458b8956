# shellcheck shell=bash disable=SC2034 # variables here are set for the sourcing script
# Shared pieces of the comparison scripts (benches/*_compare.sh, benches/proxy_dhcp_rate.sh):
# a server and a load namespace joined by a veth pair, the server process's lifecycle and
# what is read about it from /proc. Sourced, not run. Each script sets, before sourcing:
#   BENCH   its name (messages, temp dirs, namespace prefix)
# and afterwards calls `bench_setup SRV_IP LOAD_IP SECOND_OCTETS SOURCES`.
#
# Everything here is stopped and removed on exit: the server by its PID, the namespaces
# (with the veth pair in them), the temp dir.

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ID=${BENCH:0:3}$$              # unique per run: namespaces and links
NS_SRV=$ID-srv
NS_LOAD=$ID-load
VETH_SRV=${ID}s
VETH_LOAD=${ID}l
SERVER_PID=""
SERVER2_PID=""                 # a second server process (dnsmasq's proxy beside tftpd-hpa)
SAMPLER_PID=""
WORK=""
TCK=$(getconf CLK_TCK)

bench_die() {
    echo "$BENCH: $*" >&2
    exit 1
}

bench_require_root() {
    [ "$(id -u)" = 0 ] || bench_die "run as root (namespaces, tc, ports 67/69)"
}

bench_cleanup() {
    set +e
    stop_sampler
    stop_server
    ip netns del "$NS_SRV" 2>/dev/null
    ip netns del "$NS_LOAD" 2>/dev/null
    [ -n "$WORK" ] && rm -rf "$WORK"
}
trap bench_cleanup EXIT
trap 'exit 130' INT TERM

stop_server() {
    local pid
    for pid in $SERVER_PID $SERVER2_PID; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    SERVER_PID=""
    SERVER2_PID=""
}

stop_sampler() {
    if [ -n "$SAMPLER_PID" ]; then
        kill "$SAMPLER_PID" 2>/dev/null || true
        wait "$SAMPLER_PID" 2>/dev/null || true
        SAMPLER_PID=""
    fi
}

# Not for starting servers in the background: `in_srv srv &` forks a subshell, and $! would
# be the subshell, not the server. Start them with `ip netns exec "$NS_SRV" srv &`, which
# execs the server, so $! is its PID (for kill, CPU and RSS).
in_srv() { ip netns exec "$NS_SRV" "$@"; }
in_load() { ip netns exec "$NS_LOAD" "$@"; }

# Build the release binary into $BIN, unless BIN already names one (an older build, to
# compare against in the same run).
build_ironboot() {
    if [ -n "${BIN:-}" ]; then
        [ -x "$BIN" ] || bench_die "BIN=$BIN is not executable"
        echo "== using $BIN" >&2
        return
    fi
    echo "== building ironboot (release)" >&2
    (cd "$REPO" && cargo build --release --bin ironboot >&2)
    BIN=$REPO/target/release/ironboot
}

# Build the Go peer (tests/pxe-peer: the Go provider's DHCP and TFTP libraries, configured
# as the provider configures them) into $GO_PEER.
build_go_peer() {
    local go
    go=$(command -v go || echo /usr/local/go/bin/go)
    [ -x "$go" ] || bench_die "Go not found: the go-provider peer needs it (tests/install-prereqs.sh)"
    echo "== building the Go peer (tests/pxe-peer)" >&2
    (cd "$REPO/tests/pxe-peer" && "$go" build -o "$WORK/pxe-peer" .) ||
        bench_die "go build of tests/pxe-peer failed"
    GO_PEER=$WORK/pxe-peer
}

# tftpd-hpa unpacked into $WORK (installing the package would start a system service, and
# atftpd would remove it); its path into $HPA.
fetch_tftpd_hpa() {
    mkdir -p "$WORK/hpa"
    (cd "$WORK/hpa" && apt-get download tftpd-hpa >/dev/null 2>&1 ||
        { apt-get update >/dev/null && apt-get download tftpd-hpa >/dev/null; }) ||
        bench_die "apt-get download tftpd-hpa failed"
    dpkg-deb -x "$WORK"/hpa/tftpd-hpa_*.deb "$WORK/hpa/x"
    HPA=$WORK/hpa/x/usr/sbin/in.tftpd
}

# bench_setup SRV_IP LOAD_IP NET SOURCES: the two namespaces, the veth pair, the server at
# SRV_IP, the generator at LOAD_IP plus SOURCES addresses in NET.(1+i/250).(1+i%250) (one
# per emulated machine or client at most, as in a rack: servers may cap transfers per
# address), comma-separated into $BINDS. Makes the temp dir $WORK.
bench_setup() {
    local srv_ip=$1 load_ip=$2 net=$3 sources=$4 addrs=() i
    WORK=$(mktemp -d "/tmp/$BENCH.XXXXXX")
    chmod 755 "$WORK"
    ip netns add "$NS_SRV"
    ip netns add "$NS_LOAD"
    ip link add "$VETH_SRV" type veth peer name "$VETH_LOAD"
    ip link set "$VETH_SRV" netns "$NS_SRV"
    ip link set "$VETH_LOAD" netns "$NS_LOAD"
    in_srv ip addr add "$srv_ip/16" dev "$VETH_SRV"
    in_srv ip link set "$VETH_SRV" up
    in_srv ip link set lo up
    in_load ip addr add "$load_ip/16" dev "$VETH_LOAD"
    for i in $(seq 0 $((sources - 1))); do addrs+=("$net.$((1 + i / 250)).$((1 + i % 250))"); done
    if [ "${#addrs[@]}" -gt 0 ]; then
        printf "addr add %s/16 dev $VETH_LOAD\n" "${addrs[@]}" | in_load ip -batch -
    fi
    BINDS=$(IFS=,; echo "${addrs[*]}")
    in_load ip link set "$VETH_LOAD" up
    in_load ip link set lo up
}

# shape none|1gbit: the server's veth egress (the data direction) as it is, or through a
# token bucket at 1 Gbit/s (burst $TBF_BURST, queue bounded at 50 ms).
shape() {
    in_srv tc qdisc del dev "$VETH_SRV" root 2>/dev/null || true
    if [ "$1" = 1gbit ]; then
        in_srv tc qdisc add dev "$VETH_SRV" root tbf rate 1gbit burst "${TBF_BURST:-256kbit}" latency 50ms
    fi
}

# CPU ticks of a process and its reaped children (utime stime cutime cstime).
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13 + $14 + $15}'; }
# Busy ticks of the whole machine: user nice system irq softirq steal.
machine_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }
# Peak RSS since the last `echo 5 > /proc/PID/clear_refs`.
hwm_kib() { awk '/^VmHWM/ {print $2}' "/proc/$1/status"; }
# UDP datagrams the server namespace's kernel dropped for a full receive buffer.
# shellcheck disable=SC2016 # awk's own $ fields
rcvbuf_errors() { in_srv awk '/^Udp:/ {n++; if (n == 1) for (i = 1; i <= NF; i++) col[$i] = i; else print $col["RcvbufErrors"]}' /proc/net/snmp; }
# Bytes the server's veth has sent (Ethernet frames without preamble and gap).
tx_bytes() { in_srv cat "/sys/class/net/$VETH_SRV/statistics/tx_bytes"; }

# Peak of the summed VmRSS of the server processes and their children, into $1 (for
# servers that fork per transfer, like tftpd-hpa). Run in the background; stop with
# stop_sampler.
sample_rss() {
    local out=$1 peak=0 sum pid rss top
    while true; do
        sum=0
        for pid in $(for top in $SERVER_PID $SERVER2_PID; do echo "$top"; pgrep -P "$top"; done 2>/dev/null); do
            # Empty for a child that just exited (a zombie has no VmRSS).
            rss=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
            sum=$((sum + ${rss:-0}))
        done
        [ "$sum" -gt "$peak" ] && peak=$sum && echo "$peak" >"$out"
        sleep 0.2
    done
}

start_sampler() {
    echo 0 >"$1"
    sample_rss "$1" &
    SAMPLER_PID=$!
}

# The PXE servers' files in $WORK: tftp/ (snp.efi, undionly.kpxe) for dnsmasq, tftpd-hpa and
# the Go peer, ipxe/ for ironboot, and dnsmasq's proxy configurations: dnsmasq.conf (a boot
# service per architecture, TFTP by dnsmasq itself, tftp-max raised, quiet) and
# dnsmasq-proxy.conf (the same without TFTP, for dnsmasq+tftpd-hpa).
# shellcheck disable=SC2153 # SRV_IP, OUT: set by the sourcing script
stage_pxe_files() {
    mkdir -p "$OUT" "$WORK/tftp" "$WORK/ipxe"
    chmod 755 "$WORK/tftp" "$WORK/ipxe"
    install -m 644 /usr/lib/ipxe/snponly.efi "$WORK/tftp/snp.efi"
    install -m 644 /usr/lib/ipxe/undionly.kpxe "$WORK/tftp/undionly.kpxe"
    install -m 644 /usr/lib/ipxe/snponly.efi /usr/lib/ipxe/undionly.kpxe "$WORK/ipxe/"
    cat >"$WORK/dnsmasq-proxy.conf" <<EOF
port=0
interface=$VETH_SRV
bind-interfaces
dhcp-range=$SRV_IP,proxy,255.255.0.0
pxe-service=X86-64_EFI,"bench",snp.efi
pxe-service=x86PC,"bench",undionly.kpxe
EOF
    cp "$WORK/dnsmasq-proxy.conf" "$WORK/dnsmasq.conf"
    printf 'enable-tftp\ntftp-root=%s\ntftp-max=4000\nquiet-tftp\n' "$WORK/tftp" >>"$WORK/dnsmasq.conf"
}

# start_pxe_server NAME [STORM ARGS...]: start one PXE server in the server namespace, at
# $SRV_IP on $VETH_SRV, its output in $OUT/NAME.log, and wait until a one-machine storm
# (with STORM ARGS, e.g. `--stop-after discover` or `--no-http`) boots through it. NAME:
#   ironboot-io-uring, ironboot-portable  $BIN with that driver, $WORK/ipxe, and
#                       $WORK/inventory.toml if there is one, plus $IRONBOOT_ARGS
#   dnsmasq             dnsmasq with $WORK/dnsmasq.conf
#   dnsmasq+tftpd-hpa   dnsmasq with $WORK/dnsmasq-proxy.conf, and $HPA serving $WORK/tftp
#   go-provider         $GO_PEER (tests/pxe-peer) serving $WORK/tftp
# shellcheck disable=SC2153 # SRV_IP, OUT, BIN, HPA, GO_PEER: set by the sourcing script
start_pxe_server() {
    local name=$1 inventory=()
    shift
    case $name in
    ironboot-io-uring | ironboot-portable)
        rm -rf "$WORK/state" && mkdir -p "$WORK/state"
        [ -f "$WORK/inventory.toml" ] && inventory=(--inventory "$WORK/inventory.toml")
        ip netns exec "$NS_SRV" "$BIN" --dhcp-proxy-iface-or-ip "$VETH_SRV" \
            --api-advertise-address "$SRV_IP" --state-dir "$WORK/state" "${inventory[@]}" \
            --ipxe-dir "$WORK/ipxe" --udp-driver "${name#ironboot-}" "${IRONBOOT_ARGS[@]}" \
            >"$OUT/$name.log" 2>&1 &
        ;;
    dnsmasq)
        ip netns exec "$NS_SRV" dnsmasq --keep-in-foreground --conf-file="$WORK/dnsmasq.conf" \
            --user=root --pid-file= --log-facility=/dev/null >"$OUT/$name.log" 2>&1 &
        ;;
    dnsmasq+tftpd-hpa)
        ip netns exec "$NS_SRV" "$HPA" -L -s "$WORK/tftp" -a "$SRV_IP:69" >"$OUT/$name-tftpd.log" 2>&1 &
        SERVER2_PID=$!
        ip netns exec "$NS_SRV" dnsmasq --keep-in-foreground --conf-file="$WORK/dnsmasq-proxy.conf" \
            --user=root --pid-file= --log-facility=/dev/null >"$OUT/$name.log" 2>&1 &
        ;;
    go-provider)
        ip netns exec "$NS_SRV" "$GO_PEER" --iface "$VETH_SRV" --advertise "$SRV_IP" \
            --listen "$SRV_IP" --tftp-root "$WORK/tftp" >"$OUT/$name.log" 2>&1 &
        ;;
    *) bench_die "unknown server $name" ;;
    esac
    # `ip netns exec` execs the server: $! is the server's own PID (not a subshell's).
    SERVER_PID=$!
    for _ in $(seq 1 50); do
        if in_load "$BIN" storm pxe --server "$SRV_IP" --interface "$VETH_LOAD" --machines 1 \
            --first 999999 --timeout-scale 0.05 --quiet "$@" >/dev/null 2>&1; then
            return 0
        fi
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.2
    done
    bench_die "$name did not start; see $OUT/$name.log"
}
