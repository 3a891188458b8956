package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path"
	"strings"
	"time"
)

// servedName normalises a requested path lexically, as the provider does for TFTP and
// /tftp/: "snp.efi", "/snp.efi" and "/amd64/../snp.efi" are the same key.
func servedName(requested string) string {
	return strings.TrimPrefix(path.Clean("/"+requested), "/")
}

// tftpFiles is the read-only TFTP handler over the in-memory files.
type tftpFiles struct {
	files  map[string][]byte
	logger *slog.Logger
}

// read sends the file from a bytes.Reader: pin/tftp sees a seekable reader and so answers
// the tsize option with the file's size.
func (t *tftpFiles) read(filename string, rf io.ReaderFrom) error {
	t.logger.Info("file requested", "filename", filename)

	contents, ok := t.files[servedName(filename)]
	if !ok {
		t.logger.Error("file not found", "filename", filename)

		return fmt.Errorf("file %q not found", filename)
	}

	n, err := rf.ReadFrom(bytes.NewReader(contents))
	if err != nil {
		t.logger.Error("sending file", "filename", filename, "error", err)

		return err
	}

	t.logger.Info("file sent", "filename", filename, "bytes", n)

	return nil
}

// bootScript stands in for the provider's boot decision, which needs Omni's state.
const bootScript = "#!ipxe\necho pxepeer: static boot script (no Omni behind this peer)\nexit\n"

// newHTTPServer serves GET /ipxe/boot.ipxe (a static script; 500 without uuid, as the
// provider), other /ipxe/ scripts 404, and the in-memory files under /tftp/. HTTP/1.1 and
// h2c, as the provider's API listener.
func newHTTPServer(ctx context.Context, files map[string][]byte, logger *slog.Logger) *http.Server {
	mux := http.NewServeMux()

	mux.HandleFunc("/ipxe/{script}", func(w http.ResponseWriter, req *http.Request) {
		if req.PathValue("script") != "boot.ipxe" {
			logger.Error("invalid iPXE script", "script", req.PathValue("script"))
			w.WriteHeader(http.StatusNotFound)

			return
		}

		if req.URL.Query().Get("uuid") == "" {
			w.WriteHeader(http.StatusInternalServerError)
			_, _ = io.WriteString(w, "failed to make boot decision: missing uuid") //nolint:errcheck

			return
		}

		w.Header().Set("Content-Length", fmt.Sprint(len(bootScript)))
		w.WriteHeader(http.StatusOK)

		if _, err := io.WriteString(w, bootScript); err != nil {
			logger.Error("writing the boot script", "error", err)

			return
		}

		if err := http.NewResponseController(w).Flush(); err != nil {
			logger.Error("flushing the boot script", "error", err)
		}
	})

	mux.Handle("/tftp/", http.StripPrefix("/tftp/", http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		contents, ok := files[servedName(req.URL.Path)]
		if !ok {
			http.NotFound(w, req)

			return
		}

		w.Header().Set("Content-Type", "application/octet-stream")
		http.ServeContent(w, req, "", time.Time{}, bytes.NewReader(contents))
	})))

	logged := http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		start := time.Now()

		mux.ServeHTTP(w, req)

		logger.Info("request", "method", req.Method, "path", req.URL.Path, "duration", time.Since(start))
	})

	protocols := new(http.Protocols)
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)

	return &http.Server{
		Handler:     logged,
		BaseContext: func(net.Listener) context.Context { return ctx },
		Protocols:   protocols,
	}
}
