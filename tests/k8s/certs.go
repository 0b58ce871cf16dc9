package main

// The test cluster's PKI, made fresh for each cluster: one CA; the API server's serving
// certificate for 127.0.0.1; client certificates whose subject is the identity each component
// has in a real cluster (system:masters for the admin, system:node:<name> in system:nodes for a
// kubelet, so the Node authorizer applies to it); the service-account signing key; and a
// kubeconfig per identity.

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"flag"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

type keyPair struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func certs(args []string) int {
	fs := flag.NewFlagSet("certs", flag.ContinueOnError)
	dir := fs.String("dir", "", "directory to write into")
	server := fs.String("server", "", "API server URL for the kubeconfigs")
	nodes := fs.String("nodes", "", "comma-separated node names to make kubelet identities for")
	if err := fs.Parse(args); err != nil || *dir == "" || *server == "" {
		fmt.Fprintln(os.Stderr, "usage: k8s certs --dir D --server https://127.0.0.1:PORT [--nodes a,b]")
		return 2
	}
	if err := writeCerts(*dir, *server, *nodes); err != nil {
		fmt.Fprintf(os.Stderr, "certs: %v\n", err)
		return 1
	}
	return 0
}

func writeCerts(dir, server, nodes string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	ca, err := issue(nil, pkix.Name{CommonName: "nodeprep-test-ca"}, nil, true)
	if err != nil {
		return err
	}
	if err := writePair(dir, "ca", ca); err != nil {
		return err
	}
	serving, err := issue(ca, pkix.Name{CommonName: "kube-apiserver"}, &x509.Certificate{
		DNSNames:    []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("10.0.0.1")},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, false)
	if err != nil {
		return err
	}
	if err := writePair(dir, "apiserver", serving); err != nil {
		return err
	}
	sa, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	if err := writeKey(filepath.Join(dir, "sa.key"), sa); err != nil {
		return err
	}
	pub, err := x509.MarshalPKIXPublicKey(&sa.PublicKey)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "sa.pub"), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o600); err != nil {
		return err
	}
	clients := map[string]pkix.Name{
		"admin":                    {CommonName: "admin", Organization: []string{"system:masters"}},
		"kube-scheduler":           {CommonName: "system:kube-scheduler"},
		"kube-controller-manager":  {CommonName: "system:kube-controller-manager"},
		"apiserver-kubelet-client": {CommonName: "kube-apiserver-kubelet-client", Organization: []string{"system:masters"}},
	}
	for _, n := range strings.Split(nodes, ",") {
		if n != "" {
			clients["kubelet-"+n] = pkix.Name{CommonName: "system:node:" + n, Organization: []string{"system:nodes"}}
		}
	}
	for name, subject := range clients {
		c, err := issue(ca, subject, &x509.Certificate{ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, false)
		if err != nil {
			return err
		}
		if err := writePair(dir, name, c); err != nil {
			return err
		}
		if err := writeKubeconfig(dir, name, server); err != nil {
			return err
		}
	}
	return nil
}

func issue(parent *keyPair, subject pkix.Name, tmpl *x509.Certificate, isCA bool) (*keyPair, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return nil, err
	}
	if tmpl == nil {
		tmpl = &x509.Certificate{}
	}
	tmpl.SerialNumber = serial
	tmpl.Subject = subject
	tmpl.NotBefore = time.Now().Add(-time.Hour)
	tmpl.NotAfter = time.Now().Add(7 * 24 * time.Hour)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment
	if isCA {
		tmpl.IsCA = true
		tmpl.BasicConstraintsValid = true
		tmpl.KeyUsage |= x509.KeyUsageCertSign
	}
	signer, signerKey := tmpl, key
	if parent != nil {
		signer, signerKey = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, &key.PublicKey, signerKey)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &keyPair{cert: cert, key: key}, nil
}

func writeKey(path string, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600)
}

func writePair(dir, name string, kp *keyPair) error {
	crt := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: kp.cert.Raw})
	if err := os.WriteFile(filepath.Join(dir, name+".crt"), crt, 0o600); err != nil {
		return err
	}
	return writeKey(filepath.Join(dir, name+".key"), kp.key)
}

func writeKubeconfig(dir, name, server string) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	cfg := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: %s
    certificate-authority: %s/ca.crt
users:
- name: %s
  user:
    client-certificate: %s/%s.crt
    client-key: %s/%s.key
contexts:
- name: test
  context: {cluster: test, user: %s}
current-context: test
`, server, abs, name, abs, name, abs, name, name)
	return os.WriteFile(filepath.Join(dir, name+".kubeconfig"), []byte(cfg), 0o600)
}
