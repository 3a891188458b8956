package main

// In-band IPMI set-up, as the real metal agent does it through the host's /dev/ipmi0:
// with --ipmi-admin, SetPowerManagement creates (or claims) the requested user on the
// BMC at --ipmi-address:--ipmi-port before answering, so the provider can use the
// credentials it chose. Here the "in-band" path is ipmitool over lanplus with the BMC's
// administrator account (the simulated BMCs of ironboot's scenario test are ipmi_sim).

import (
	"flag"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
)

var ipmiAdmin = flag.String("ipmi-admin", "", "SetPowerManagement: create the user on the BMC through ipmitool as this admin, user:password")

// agentUserSlot is the BMC user ID the agent uses (ipmi_sim's slots 1 and 2 are taken).
const agentUserSlot = "3"

func configureInBand(username, password string) error {
	admin, adminPassword, ok := strings.Cut(*ipmiAdmin, ":")
	if !ok {
		return fmt.Errorf("--ipmi-admin must be user:password")
	}
	base := []string{"-I", "lanplus", "-C", "3", "-H", *ipmiAddr, "-p", strconv.FormatUint(uint64(*ipmiPort), 10), "-U", admin, "-P", adminPassword}
	steps := [][]string{
		{"user", "set", "name", agentUserSlot, username},
		{"user", "set", "password", agentUserSlot, password},
		{"channel", "setaccess", "1", agentUserSlot, "callin=on", "ipmi=on", "link=on", "privilege=4"},
		{"user", "enable", agentUserSlot},
	}
	for _, step := range steps {
		out, err := exec.Command("ipmitool", append(append([]string{}, base...), step...)...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("ipmitool %s: %v: %s", step[0]+" "+step[1], err, out)
		}
	}
	return nil
}
