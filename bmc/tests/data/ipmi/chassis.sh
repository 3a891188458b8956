#!/bin/sh
# chassis_control helper for ipmi_sim (bmc/tests/ipmi_sim.rs). The simulator runs
# "$0 get power boot", "$0 set power 1", "$0 set reset 1", "$0 set boot pxe".
# State lives in $CHASSIS_STATE (one directory per simulated BMC, set by the test);
# every call is appended to $CHASSIS_STATE/log, which the tests read back.
D=${CHASSIS_STATE:?CHASSIS_STATE must name this BMC s state directory}
mkdir -p "$D"
echo "$(date +%T) $*" >> "$D/log"
op=$1; shift
case $op in
  get) for k in "$@"; do v=$(cat "$D/$k" 2>/dev/null); [ -z "$v" ] && { [ "$k" = boot ] && v=default || v=0; }; echo "$k:$v"; done ;;
  set) while [ $# -ge 2 ]; do echo "$2" > "$D/$1"; shift 2; done ;;
  check) exit 0 ;;
esac
