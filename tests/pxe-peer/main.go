// Command pxepeer serves PXE the way the Go provider (siderolabs/omni-infra-provider-bare-metal)
// does, on the same libraries at the same versions: ProxyDHCP with insomniacslk/dhcp's server4
// (a DISCOVER-only listener on 67 and a REQUEST-only listener on 4011, bound to one interface),
// single-port TFTP with pin/tftp/v3 serving files from memory, and a plain HTTP stand-in for the
// provider's boot-script endpoint. It is a comparison peer for `ironboot storm pxe` and the
// benchmarks; see README.md for what it mirrors and what it leaves out.
//
// On start it prints one JSON line `{"msg":"listening",...}` on stdout once every socket is
// bound; errors go to stderr, and a bind failure exits with status 1.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4/server4"
	"github.com/pin/tftp/v3"
)

// The provider's two ProxyDHCP ports.
const (
	portDHCP = 67
	portPXE  = 4011
)

type options struct {
	ifaceOrIP        string
	advertise        net.IP
	apiPort          int
	tftpRoot         string
	listen           string
	disableBroadcast bool
	verbose          bool
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "pxepeer: %v\n", err)
		os.Exit(1)
	}
}

func parseFlags() (options, error) {
	var o options

	var advertise string

	flag.StringVar(&o.ifaceOrIP, "iface", "", "interface of the ProxyDHCP listeners (name, or an IP of it; default: the --advertise address's interface)")
	flag.StringVar(&advertise, "advertise", "", "IPv4 address advertised to the machines (next-server, option 66, URLs); required")
	flag.IntVar(&o.apiPort, "api-port", 50042, "HTTP port (boot script, /tftp/ files)")
	flag.StringVar(&o.tftpRoot, "tftp-root", "", "directory whose files are loaded into memory and served over TFTP and HTTP /tftp/; required")
	flag.StringVar(&o.listen, "listen", "", "IP the TFTP (:69) and HTTP listeners bind to (default: all addresses, as the provider)")
	flag.BoolVar(&o.disableBroadcast, "disable-broadcast", false, "no port 67 listener, only 4011 (the provider's --disable-dhcp-proxy-broadcast)")
	flag.BoolVar(&o.verbose, "verbose", false, "log every reply and file request to stderr (the provider logs them at info level)")
	flag.Parse()

	if flag.NArg() != 0 {
		return o, fmt.Errorf("unexpected arguments %q", flag.Args())
	}

	o.advertise = net.ParseIP(advertise).To4()
	if o.advertise == nil {
		return o, fmt.Errorf("--advertise %q: want an IPv4 address", advertise)
	}

	if o.apiPort <= 0 || o.apiPort > 65535 {
		return o, fmt.Errorf("--api-port %d: out of range", o.apiPort)
	}

	if o.tftpRoot == "" {
		return o, errors.New("--tftp-root is required")
	}

	if o.listen != "" && net.ParseIP(o.listen) == nil {
		return o, fmt.Errorf("--listen %q: not an IP address", o.listen)
	}

	if o.ifaceOrIP == "" {
		o.ifaceOrIP = o.advertise.String()
	}

	return o, nil
}

func run() error {
	o, err := parseFlags()
	if err != nil {
		return err
	}

	level := slog.LevelWarn
	if o.verbose {
		level = slog.LevelInfo
	}

	logger := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	files, err := loadFiles(o.tftpRoot)
	if err != nil {
		return err
	}

	for _, advertised := range []string{"undionly.kpxe", "snp.efi", "snp-arm64.efi"} {
		if _, ok := files[advertised]; !ok {
			logger.Warn("advertised boot file missing from --tftp-root", "file", advertised, "dir", o.tftpRoot)
		}
	}

	iface, err := findInterface(o.ifaceOrIP)
	if err != nil {
		return err
	}

	// Bind everything first, so a bind failure is reported before "listening".
	proxy := &proxyDHCP{advertise: o.advertise, apiPort: o.apiPort, logger: logger}

	ports := []int{portDHCP, portPXE}
	if o.disableBroadcast {
		ports = []int{portPXE}
	}

	dhcpServers := make([]*server4.Server, 0, len(ports))
	dhcpAddrs := make([]string, 0, len(ports))

	for _, port := range ports {
		// As the provider: 0.0.0.0:<port>, SO_BINDTODEVICE <iface> (server4 sets it, with
		// SO_BROADCAST and SO_REUSEADDR/SO_REUSEPORT).
		srv, bindErr := server4.NewServer(iface, &net.UDPAddr{Port: port}, proxy.handler(port))
		if bindErr != nil {
			return fmt.Errorf("binding the ProxyDHCP listener 0.0.0.0:%d on interface %s: %w", port, iface, bindErr)
		}

		dhcpServers = append(dhcpServers, srv)
		dhcpAddrs = append(dhcpAddrs, fmt.Sprintf("%s:%d", iface, port))
	}

	// TFTP exactly as the provider configures it; binding ourselves is what
	// tftp.Server.ListenAndServe does, done here so a failure is known before "listening".
	tftpAddr := net.JoinHostPort(o.listen, "69")

	udpAddr, err := net.ResolveUDPAddr("udp", tftpAddr)
	if err != nil {
		return fmt.Errorf("TFTP address %s: %w", tftpAddr, err)
	}

	tftpConn, err := net.ListenUDP("udp", udpAddr)
	if err != nil {
		return fmt.Errorf("binding the TFTP listener %s: %w", tftpAddr, err)
	}

	tftpServer := tftp.NewServer((&tftpFiles{files: files, logger: logger}).read, nil)
	tftpServer.EnableSinglePort()
	tftpServer.SetTimeout(5 * time.Second)

	httpAddr := net.JoinHostPort(o.listen, strconv.Itoa(o.apiPort))

	httpListener, err := net.Listen("tcp", httpAddr)
	if err != nil {
		return fmt.Errorf("binding the HTTP listener %s: %w", httpAddr, err)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	httpServer := newHTTPServer(ctx, files, logger)

	// Any listener ending on its own is fatal.
	fatal := make(chan error, len(dhcpServers)+2)

	for i, srv := range dhcpServers {
		go func() {
			if serveErr := srv.Serve(); serveErr != nil && ctx.Err() == nil {
				fatal <- fmt.Errorf("ProxyDHCP listener %s: %w", dhcpAddrs[i], serveErr)
			}
		}()
	}

	go func() {
		if serveErr := tftpServer.Serve(tftpConn); serveErr != nil && ctx.Err() == nil {
			fatal <- fmt.Errorf("TFTP listener %s: %w", tftpAddr, serveErr)
		}
	}()

	go func() {
		if serveErr := httpServer.Serve(httpListener); serveErr != nil && !errors.Is(serveErr, http.ErrServerClosed) {
			fatal <- fmt.Errorf("HTTP listener %s: %w", httpAddr, serveErr)
		}
	}()

	sizes := make(map[string]int, len(files))
	for name, contents := range files {
		sizes[name] = len(contents)
	}

	line, err := json.Marshal(map[string]any{
		"msg":       "listening",
		"dhcp":      dhcpAddrs,
		"tftp":      tftpConn.LocalAddr().String(),
		"http":      httpListener.Addr().String(),
		"advertise": o.advertise.String(),
		"files":     sizes,
	})
	if err != nil {
		return err
	}

	fmt.Println(string(line))

	var runErr error

	select {
	case <-ctx.Done():
	case runErr = <-fatal:
		logger.Error("listener failed", "error", runErr)
	}

	stop()

	for _, srv := range dhcpServers {
		_ = srv.Close() //nolint:errcheck
	}

	tftpServer.Shutdown()

	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	_ = httpServer.Shutdown(shutdownCtx) //nolint:errcheck

	return runErr
}

// findInterface resolves --iface as the provider resolves --dhcp-proxy-iface-or-ip: an
// interface of that name, else (if it is an IP) the interface holding that address.
func findInterface(ifaceOrIP string) (string, error) {
	ifaces, err := net.Interfaces()
	if err != nil {
		return "", fmt.Errorf("listing network interfaces: %w", err)
	}

	ip := net.ParseIP(ifaceOrIP)

	for _, iface := range ifaces {
		if iface.Name == ifaceOrIP {
			return iface.Name, nil
		}

		if ip == nil {
			continue
		}

		addrs, addrErr := iface.Addrs()
		if addrErr != nil {
			continue
		}

		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok && n.IP.Equal(ip) {
				return iface.Name, nil
			}
		}
	}

	return "", fmt.Errorf("--iface %q: no interface of that name or holding that address", ifaceOrIP)
}

// loadFiles reads every regular file under root into memory, keyed by its slash-separated
// path relative to root (the provider's in-memory map, e.g. "snp.efi", "amd64/snp.efi").
func loadFiles(root string) (map[string][]byte, error) {
	files := map[string][]byte{}

	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, walkErr error) error {
		if walkErr != nil {
			return walkErr
		}

		if !d.Type().IsRegular() {
			return nil
		}

		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}

		contents, err := os.ReadFile(p)
		if err != nil {
			return err
		}

		files[filepath.ToSlash(rel)] = contents

		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("loading --tftp-root %s: %w", root, err)
	}

	if len(files) == 0 {
		return nil, fmt.Errorf("--tftp-root %s has no files to serve", root)
	}

	return files, nil
}
