// A TLS client written against Go's standard library only (crypto/tls, net/http), used by
// ztkit's tests as an independent peer: it speaks to the example servers and reports what
// happened in one line, exit code 0 when the HTTPS request succeeded.
//
//	go run go_tls_client.go -addr 127.0.0.1:8443 -ca ca.pem -cert client.pem -key client.key
//
// Output, one line:
//
//	STATUS <code> <HTTP proto> <TLS version> <body>   the server answered (exit 0 for 200, 3 otherwise)
//	REFUSED <error>                                    no HTTP response (exit 1)
//	SETUP-ERROR <error>                                bad arguments or files (exit 2)
package main

import (
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"
)

func tlsVersion(v uint16) string {
	switch v {
	case tls.VersionTLS13:
		return "TLS1.3"
	case tls.VersionTLS12:
		return "TLS1.2"
	default:
		return fmt.Sprintf("TLS-0x%04x", v)
	}
}

func main() {
	addr := flag.String("addr", "", "host:port of the server")
	caFile := flag.String("ca", "", "PEM file with the CA that signed the server certificate")
	certFile := flag.String("cert", "", "client certificate chain (PEM); empty: no client certificate")
	keyFile := flag.String("key", "", "client private key (PEM)")
	serverName := flag.String("servername", "localhost", "SNI and the name to verify")
	path := flag.String("path", "/", "request path")
	tls12 := flag.Bool("tls12only", false, "offer TLS 1.2 only")
	flag.Parse()

	pool := x509.NewCertPool()
	caPEM, err := os.ReadFile(*caFile)
	if err != nil || !pool.AppendCertsFromPEM(caPEM) {
		fmt.Printf("SETUP-ERROR cannot load CA %s: %v\n", *caFile, err)
		os.Exit(2)
	}
	cfg := &tls.Config{RootCAs: pool, ServerName: *serverName, MinVersion: tls.VersionTLS12}
	if *tls12 {
		cfg.MaxVersion = tls.VersionTLS12
	}
	if *certFile != "" {
		pair, err := tls.LoadX509KeyPair(*certFile, *keyFile)
		if err != nil {
			fmt.Printf("SETUP-ERROR cannot load client certificate: %v\n", err)
			os.Exit(2)
		}
		// Present the certificate whatever CA names the server asks for (Go would otherwise
		// send none when its issuer is not in the list), so the server's own check is tested.
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return &pair, nil
		}
	}
	client := &http.Client{
		Timeout: 10 * time.Second,
		// One attempt, no connection reuse: each run is exactly one handshake.
		Transport: &http.Transport{TLSClientConfig: cfg, ForceAttemptHTTP2: true, DisableKeepAlives: true},
	}
	resp, err := client.Get("https://" + *addr + *path)
	if err != nil {
		fmt.Printf("REFUSED %v\n", err)
		os.Exit(1)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	version := "unknown"
	if resp.TLS != nil {
		version = tlsVersion(resp.TLS.Version)
	}
	fmt.Printf("STATUS %d %s %s %s\n", resp.StatusCode, resp.Proto, version, strings.TrimSpace(string(body)))
	if resp.StatusCode != 200 {
		os.Exit(3)
	}
}
