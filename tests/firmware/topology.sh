#!/bin/bash
# Builds (up) or removes (down) the isolated PXE test LAN of the real-firmware test.
#   PFX-lan  : bridge br0; the VM taps tap0..tapN-1 and the veths vdhcp/vprov are its ports
#   PFX-dhcp : 10.98.0.2/24 + fd98::2/64 on eth0 - the site's plain DHCP server (+ IPv6 RA)
#   PFX-prov : 10.98.0.3/24 on eth0 - the server under test (ironboot), alone
# All links are created inside the namespaces (never in the caller's namespace), so
# interface names cannot clash with the host or with another prefix.
# `down` only deletes the namespaces: it never kills anything (the caller kills, by PID,
# what it started). It prints any process still left in them.
# usage: topology.sh up|down|status [PFX] [NTAPS]
set -euo pipefail
cmd=${1:?usage: topology.sh up|down|status [PFX] [NTAPS]}
P=${2:-ibfw}
N=${3:-2}
NSS=(lan dhcp prov)

exists() { ip netns list | awk '{print $1}' | grep -qx -- "$1"; }

case $cmd in
down)
  for n in "${NSS[@]}"; do
    exists "$P-$n" || continue
    left=$(ip netns pids "$P-$n" 2>/dev/null | tr '\n' ' ')
    [ -z "$left" ] || echo "topology: warning: processes still in $P-$n: $left" >&2
    ip netns del "$P-$n" || true
  done
  ;;
status)
  for n in "${NSS[@]}"; do
    if exists "$P-$n"; then echo "$P-$n: pids=[$(ip netns pids "$P-$n" | tr '\n' ' ')]"; fi
  done
  ;;
up)
  for n in "${NSS[@]}"; do
    ip netns add "$P-$n"
    ip -n "$P-$n" link set lo up
  done
  ip -n "$P-lan" link add br0 type bridge
  # No STP, no forwarding delay: the firmware starts DHCP right after link-up.
  ip -n "$P-lan" link set br0 type bridge stp_state 0 forward_delay 0
  ip -n "$P-lan" link set br0 up
  for i in $(seq 0 $((N - 1))); do
    ip -n "$P-lan" tuntap add dev "tap$i" mode tap
    ip -n "$P-lan" link set "tap$i" master br0 up
  done
  for n in dhcp prov; do
    case $n in dhcp) a=2 ;; prov) a=3 ;; esac
    ip -n "$P-lan" link add "v$n" type veth peer name eth0 netns "$P-$n"
    ip -n "$P-lan" link set "v$n" master br0 up
    ip -n "$P-$n" addr add "10.98.0.$a/24" dev eth0
    ip -n "$P-$n" link set eth0 up
  done
  ip -n "$P-dhcp" -6 addr add fd98::2/64 dev eth0 nodad
  ;;
*)
  echo "usage: topology.sh up|down|status [PFX] [NTAPS]" >&2
  exit 2
  ;;
esac
