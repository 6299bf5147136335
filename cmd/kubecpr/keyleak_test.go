package main

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"unicode"

	"k8s.io/client-go/tools/clientcmd"

	"github.com/kubecpr/kubecpr/recovery/pki"
	"github.com/kubecpr/kubecpr/test/fixture"
)

// The key-leak scan. After real runs (keys kept, and keys rotated), it
// collects EVERY private key the node holds or held — PEM key files (pki
// *.key, the kubelet's key and client pem) and the client-key-data embedded
// in every kubeconfig (admin.conf, super-admin.conf, controller-manager.conf,
// scheduler.conf, kubelet.conf, users' ~/.kube/config), before the run,
// after it and after the rollback, backups included — and searches the
// runs' stdout and stderr, the journals and every other file of kubecpr's
// state dir (the backup manifests; not the backup copies, which hold keys
// by design) for each key in every form a leak takes: the whole base64 body,
// the DER in hex, the raw DER, the client-key-data value, the secret numbers
// in decimal, hex and base64, and any 24-byte run (base64) or 16-byte run
// (hex) of the key's secret part. The scan is itself tested: a key planted
// in a copy of a journal, in each of those forms, must be found.

func TestNoKeyMaterialLeaks(t *testing.T) {
	t.Parallel() // processes and trees of its own
	for _, sc := range []struct {
		name            string
		kubeletEmbedded bool // kubelet.conf embeds its client key
		run             []string
		user            bool // add /home/ops/.kube/config with a key of its own
	}{
		{name: "keys-kept", run: []string{"run", "--until", "kubeconfigs", "--update-user-kubeconfigs"}},
		{name: "keys-rotated", kubeletEmbedded: true, user: true,
			run: []string{"run", "--until", "kubeconfigs", "--update-user-kubeconfigs", "--rotate-keys"}},
	} {
		t.Run(sc.name, func(t *testing.T) {
			root := expiredNode(t, func(o *fixture.Options) { o.KubeletConfEmbedded = sc.kubeletEmbedded })
			wantSources := []string{
				"/etc/kubernetes/pki/ca.key", "/etc/kubernetes/pki/apiserver.key", "/etc/kubernetes/pki/apiserver-kubelet-client.key",
				"/etc/kubernetes/pki/apiserver-etcd-client.key", "/etc/kubernetes/pki/front-proxy-ca.key", "/etc/kubernetes/pki/front-proxy-client.key",
				"/etc/kubernetes/pki/sa.key", "/etc/kubernetes/pki/etcd/ca.key", "/etc/kubernetes/pki/etcd/server.key",
				"/etc/kubernetes/pki/etcd/peer.key", "/etc/kubernetes/pki/etcd/healthcheck-client.key",
				"/var/lib/kubelet/pki/kubelet.key", "/var/lib/kubelet/pki/kubelet-client-",
				"/etc/kubernetes/admin.conf users[", "/etc/kubernetes/super-admin.conf users[",
				"/etc/kubernetes/controller-manager.conf users[", "/etc/kubernetes/scheduler.conf users[",
				"/root/.kube/config users[",
			}
			if sc.user {
				addUserKubeconfig(t, root, "/home/ops/.kube/config")
				wantSources = append(wantSources, "/home/ops/.kube/config users[")
			}
			if sc.kubeletEmbedded {
				wantSources = append(wantSources, "/etc/kubernetes/kubelet.conf users[")
			}

			keys := newKeySet()
			keys.collect(t, root) // before the run
			var hays []*haystack
			kc := func(wantCode int, args ...string) {
				t.Helper()
				r := kubecpr(t, nil, rootArgs(root, args...)...)
				if wantCode >= 0 && r.code != wantCode {
					t.Fatalf("kubecpr %s: exit %d, want %d\n%s%s", strings.Join(args, " "), r.code, wantCode, r.stdout, r.stderr)
				}
				hays = append(hays, newHaystack("stdout of `kubecpr "+strings.Join(args, " ")+"`", []byte(r.stdout)),
					newHaystack("stderr of `kubecpr "+strings.Join(args, " ")+"`", []byte(r.stderr)))
			}
			kc(-1, "diagnose", "--offline")
			kc(-1, "plan")
			kc(0, sc.run...)
			kc(-1, "status")
			kc(-1, "-o", "json", "check")
			kc(-1, "-o", "yaml", "status")
			kc(-1, "backup", "list")
			keys.collect(t, root) // after the run: renewed and rotated keys
			kc(0, "rollback")
			kc(-1, "status")
			keys.collect(t, root) // after the rollback

			keys.requireSources(t, wantSources)
			if n := len(keys.list()); n < 17 { // 11 pki, 2 kubelet, 4 kubeconfigs
				t.Fatalf("found only %d private keys to look for", n)
			}
			state, journal := stateHaystacks(t, root)
			hays = append(hays, state...)

			for _, h := range hays {
				if strings.Contains(h.views[viewRaw], "PRIVATE KEY") {
					t.Errorf("a PEM private key header appears in %s", h.name)
				}
			}
			for _, l := range scanForKeys(keys.list(), hays) {
				t.Errorf("LEAK: %s", l)
			}
			t.Logf("searched %d keys (%d sources) in %d outputs and state files", len(keys.list()), keys.sources(), len(hays))

			t.Run("the-scan-finds-a-key-planted-in-a-copy-of-the-journal", func(t *testing.T) {
				testScanFindsPlantedKeys(t, keys, journal)
			})
		})
	}
}

// testScanFindsPlantedKeys plants keys of each kind (a pki key file, the
// kubelet's pem, kubeconfig-embedded keys) in a copy of a real journal, in
// each form a leak takes, and requires the scan to name the planted key: a
// scan that cannot fail proves nothing.
func testScanFindsPlantedKeys(t *testing.T, keys *keySet, journal []byte) {
	if len(journal) == 0 {
		t.Fatal("no journal to plant keys in")
	}
	if l := scanForKeys(keys.list(), []*haystack{newHaystack("journal copy", journal)}); len(l) != 0 {
		t.Fatalf("the unplanted journal already shows leaks: %v", l)
	}
	var picked []*leakKey
	for _, prefix := range []string{"/etc/kubernetes/pki/ca.key", "/etc/kubernetes/pki/etcd/peer.key", "/var/lib/kubelet/pki/kubelet-client-",
		"/etc/kubernetes/admin.conf users[", "/etc/kubernetes/super-admin.conf users[", "/root/.kube/config users["} {
		k := keys.bySource(prefix)
		if k == nil {
			t.Fatalf("no key from %s to plant", prefix)
		}
		picked = append(picked, k)
	}
	for _, k := range picked {
		body := base64.StdEncoding.EncodeToString(k.der)
		c := 4 * ((k.secret[0] + 2) / 3) // the first body character that is all secret
		if c < 4 {
			t.Fatalf("the secret part of %s starts at byte %d", k.sources[0], k.secret[0])
		}
		plants := map[string]string{
			"PEM in a JSON record":      jsonRecord(string(pem.EncodeToMemory(&pem.Block{Type: k.pemType, Bytes: k.der}))),
			"PEM body, headers removed": strings.Join(chunk(body, 64), "\n"),
			"base64 body on one line":   body,
			"DER as %x":                 fmt.Sprintf("%x", k.der),
			"DER as % X":                fmt.Sprintf("% X", k.der),
			"client-key-data value":     "client-key-data: " + base64.StdEncoding.EncodeToString(pem.EncodeToMemory(&pem.Block{Type: k.pemType, Bytes: k.der})),
			"%+v of the parsed key":     fmt.Sprintf("%+v", k.parsed),
			"40 chars of the body":      body[c-4 : min(len(body), c+36)],
			"40 hex digits of the DER":  hex.EncodeToString(k.der[k.secret[0]:min(k.secret[1], k.secret[0]+20)]),
		}
		for form, text := range plants {
			planted := plant(journal, text)
			found := scanForKeys([]*leakKey{k}, []*haystack{newHaystack("journal copy", planted)})
			if len(found) == 0 {
				t.Errorf("the scan missed a key from %s planted as %s", k.sources[0], form)
			}
		}
	}
}

// plant inserts text as a line in the middle of a journal.
func plant(journal []byte, text string) []byte {
	lines := bytes.SplitAfter(journal, []byte("\n"))
	i := len(lines) / 2
	out := append([]byte{}, bytes.Join(lines[:i], nil)...)
	out = append(out, text...)
	out = append(out, '\n')
	return append(out, bytes.Join(lines[i:], nil)...)
}

// jsonRecord is text as a journal record's value would hold it.
func jsonRecord(text string) string {
	b, _ := json.Marshal(map[string]any{"seq": 99, "kind": "intent", "data": map[string]string{"note": text}})
	return "00000000 " + string(b)
}

func chunk(s string, n int) []string {
	var out []string
	for len(s) > n {
		out, s = append(out, s[:n]), s[n:]
	}
	return append(out, s)
}

// ---- the scanner ----

// leakKey is one private key and the forms it is searched for.
type leakKey struct {
	sources []string // node paths (and kubeconfig users) it was found at
	der     []byte
	pemType string
	parsed  crypto.PrivateKey
	secret  [2]int    // the secret part of der: [from, to)
	forms   []keyForm // searched as substrings
	windows []keyForm // pieces of the secret part, looked up in an index
}

type keyForm struct {
	form string
	view int
	text string
}

// The views of a haystack a form is searched in.
const (
	viewRaw      = iota // as written
	viewSqueezed        // whitespace, JSON escapes (\n, \r, \t, \/) and PEM line breaks removed
	viewHex             // squeezed, lower case, without ':' separators
	numViews
)

// window is the length of the indexed pieces: 32 base64 characters hold 24
// bytes of the key, 32 hex digits 16 bytes.
const window = 32

type keySet struct{ byDER map[string]*leakKey }

func newKeySet() *keySet { return &keySet{byDER: map[string]*leakKey{}} }

func (s *keySet) list() []*leakKey {
	var out []*leakKey
	for _, k := range s.byDER {
		out = append(out, k)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].sources[0] < out[j].sources[0] })
	return out
}

func (s *keySet) sources() int {
	n := 0
	for _, k := range s.byDER {
		n += len(k.sources)
	}
	return n
}

// bySource returns a key found at a source starting with prefix.
func (s *keySet) bySource(prefix string) *leakKey {
	for _, k := range s.list() {
		for _, src := range k.sources {
			if strings.HasPrefix(src, prefix) {
				return k
			}
		}
	}
	return nil
}

// requireSources fails unless a key was found at each source prefix: the
// scan must see the keys it claims to look for.
func (s *keySet) requireSources(t *testing.T, prefixes []string) {
	t.Helper()
	for _, p := range prefixes {
		if s.bySource(p) == nil {
			t.Errorf("the scan collected no private key from %s", p)
		}
	}
}

// collect adds every private key under root: PEM key blocks in any file,
// and the client-key-data of every kubeconfig.
func (s *keySet) collect(t *testing.T, root string) {
	t.Helper()
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		np := "/" + filepath.ToSlash(rel)
		s.addPEM(t, np, b)
		if bytes.Contains(b, []byte("client-key-data")) {
			cfg, err := clientcmd.Load(b)
			if err != nil {
				t.Errorf("%s holds client-key-data but does not parse as a kubeconfig: %v", np, err)
				return nil
			}
			for name, u := range cfg.AuthInfos {
				if len(u.ClientKeyData) == 0 {
					continue
				}
				if s.addPEM(t, np+" users["+name+"] client-key-data", u.ClientKeyData) == 0 {
					t.Errorf("%s: user %s has client-key-data without a private key block", np, name)
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func (s *keySet) addPEM(t *testing.T, source string, data []byte) int {
	n := 0
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			return n
		}
		if !strings.Contains(b.Type, "PRIVATE KEY") {
			continue
		}
		n++
		if k, ok := s.byDER[string(b.Bytes)]; ok {
			if !slices.Contains(k.sources, source) {
				k.sources = append(k.sources, source)
			}
			continue
		}
		k, err := newLeakKey(source, b)
		if err != nil {
			t.Errorf("%s: %v", source, err)
			continue
		}
		s.byDER[string(b.Bytes)] = k
	}
}

// newLeakKey works out every form of the key in block b.
func newLeakKey(source string, b *pem.Block) (*leakKey, error) {
	der := b.Bytes
	k := &leakKey{sources: []string{source}, der: der, pemType: b.Type}
	body := base64.StdEncoding.EncodeToString(der)
	hexDER := hex.EncodeToString(der)
	pemText := pem.EncodeToMemory(&pem.Block{Type: b.Type, Bytes: der})
	k.forms = append(k.forms,
		keyForm{"its whole PEM body (base64)", viewSqueezed, body},
		keyForm{"its DER in hex", viewHex, hexDER},
		keyForm{"its raw DER bytes", viewRaw, string(der)},
		keyForm{"its client-key-data (base64 of the PEM)", viewSqueezed, base64.StdEncoding.EncodeToString(pemText)},
	)

	// The secret numbers, and where the secret part of the DER starts and
	// ends (everything before is version, algorithm and public modulus).
	var secrets [][]byte
	var decimals []*big.Int
	var parsed any
	var err error
	switch b.Type {
	case pki.BlockRSAKey:
		parsed, err = x509.ParsePKCS1PrivateKey(der)
	case pki.BlockECKey:
		parsed, err = x509.ParseECPrivateKey(der)
	default:
		parsed, err = x509.ParsePKCS8PrivateKey(der)
	}
	if err != nil {
		return nil, fmt.Errorf("a %s block the scan cannot parse, so cannot search for its secret parts: %v", b.Type, err)
	}
	k.parsed = parsed
	start, end := -1, len(der)
	switch p := parsed.(type) {
	case *rsa.PrivateKey:
		decimals = append(decimals, p.D)
		decimals = append(decimals, p.Primes...)
		for _, n := range decimals {
			secrets = append(secrets, n.Bytes())
		}
		start = bytes.Index(der, p.D.Bytes()) // D, the primes and the CRT values follow
	case *ecdsa.PrivateKey:
		d, err := p.Bytes()
		if err != nil {
			return nil, err
		}
		secrets = append(secrets, d)
		decimals = append(decimals, new(big.Int).SetBytes(d))
		if start = bytes.Index(der, d); start >= 0 {
			end = start + len(d)
		}
	case ed25519.PrivateKey:
		secrets = append(secrets, p.Seed())
		if start = bytes.Index(der, p.Seed()); start >= 0 {
			end = start + len(p.Seed())
		}
	default:
		return nil, fmt.Errorf("unexpected key type %T", parsed)
	}
	if start < 0 {
		return nil, fmt.Errorf("cannot locate the secret part of a %T in its DER", parsed)
	}
	k.secret = [2]int{start, end}
	for _, s := range secrets {
		k.forms = append(k.forms,
			keyForm{"a secret number in hex", viewHex, hex.EncodeToString(s)},
			keyForm{"a secret number in base64", viewSqueezed, base64.StdEncoding.EncodeToString(s)})
	}
	for _, n := range decimals {
		k.forms = append(k.forms, keyForm{"a secret number in decimal", viewRaw, n.String()})
	}
	// every aligned 24-byte run of the secret part as it appears in the
	// PEM body, and every 16-byte run in hex
	for c := 0; c+window <= len(body); c += 4 {
		if from, to := c/4*3, c/4*3+window/4*3; from >= start && to <= end {
			k.windows = append(k.windows, keyForm{"part of its PEM body", viewSqueezed, body[c : c+window]})
		}
	}
	for i := start; i+window/2 <= end; i++ {
		k.windows = append(k.windows, keyForm{"part of its DER in hex", viewHex, hexDER[2*i : 2*i+window]})
	}
	if len(k.windows) == 0 {
		return nil, fmt.Errorf("no piece of the secret part of a %T to search for", parsed)
	}
	return k, nil
}

// haystack is one output or file, in every view.
type haystack struct {
	name  string
	views [numViews]string
	index [numViews]map[string]bool
}

var unescape = strings.NewReplacer(`\n`, "", `\r`, "", `\t`, "", `\/`, "/", `\u002b`, "+", `\u003d`, "=")

func newHaystack(name string, b []byte) *haystack {
	h := &haystack{name: name}
	h.views[viewRaw] = string(b)
	h.views[viewSqueezed] = strings.Map(func(r rune) rune {
		if unicode.IsSpace(r) {
			return -1
		}
		return r
	}, unescape.Replace(string(b)))
	h.views[viewHex] = strings.ToLower(strings.ReplaceAll(h.views[viewSqueezed], ":", ""))
	return h
}

func (h *haystack) has(piece keyForm) bool {
	if h.index[piece.view] == nil {
		v := h.views[piece.view]
		idx := make(map[string]bool, len(v))
		for i := 0; i+window <= len(v); i++ {
			idx[v[i:i+window]] = true
		}
		h.index[piece.view] = idx
	}
	return h.index[piece.view][piece.text]
}

// scanForKeys reports every key found in a haystack, once per key and
// haystack, naming the first form that matched.
func scanForKeys(keys []*leakKey, hays []*haystack) []string {
	var leaks []string
	for _, h := range hays {
	key:
		for _, k := range keys {
			for _, f := range k.forms {
				if strings.Contains(h.views[f.view], f.text) {
					leaks = append(leaks, fmt.Sprintf("the key of %s appears in %s as %s", strings.Join(k.sources, ", "), h.name, f.form))
					continue key
				}
			}
			for _, w := range k.windows {
				if h.has(w) {
					leaks = append(leaks, fmt.Sprintf("the key of %s appears in %s as %s (%q)", strings.Join(k.sources, ", "), h.name, w.form, w.text))
					continue key
				}
			}
		}
	}
	return leaks
}

// stateHaystacks are the files of kubecpr's state dir, but the backups'
// copies of the node's files and the etcd snapshot (they hold keys by
// design, 0600 in a 0700 directory); it also returns the first journal.
func stateHaystacks(t *testing.T, root string) ([]*haystack, []byte) {
	t.Helper()
	state := filepath.Join(root, "var/lib/kubecpr")
	var hays []*haystack
	var journal []byte
	journals, manifests := 0, 0
	err := filepath.WalkDir(state, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(state, p)
		parts := strings.Split(filepath.ToSlash(rel), "/")
		if d.IsDir() && len(parts) == 3 && parts[0] == "backups" && (parts[2] == "files" || parts[2] == "etcd") {
			return filepath.SkipDir
		}
		if !d.Type().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		switch {
		case strings.HasPrefix(d.Name(), "journal.log"):
			journals++
			if journal == nil {
				journal = b
			}
		case d.Name() == "manifest.json":
			manifests++
		}
		hays = append(hays, newHaystack("/var/lib/kubecpr/"+filepath.ToSlash(rel), b))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if journals == 0 || manifests == 0 {
		t.Fatalf("the state dir holds %d journals and %d backup manifests: nothing to scan", journals, manifests)
	}
	return hays, journal
}

// addUserKubeconfig writes a user's kubeconfig like admin.conf, with a
// client certificate of its own (expired with the others) and its own key.
func addUserKubeconfig(t *testing.T, root, nodePath string) {
	t.Helper()
	read := func(np string) []byte {
		b, err := os.ReadFile(filepath.Join(root, filepath.FromSlash(np)))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	caCert, err := pki.ParseCertificate(read("/etc/kubernetes/pki/ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	caKey, err := pki.ParsePrivateKey(read("/etc/kubernetes/pki/ca.key"))
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(4242), Subject: pkix.Name{CommonName: "ops", Organization: []string{"kubeadm:cluster-admins"}},
		NotBefore: now.AddDate(-1, 0, -3), NotAfter: now.AddDate(0, 0, -3), KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, key.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	kp, err := pki.EncodeKey(key)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := clientcmd.Load(read("/etc/kubernetes/admin.conf"))
	if err != nil {
		t.Fatal(err)
	}
	u := cfg.AuthInfos[cfg.Contexts[cfg.CurrentContext].AuthInfo]
	u.ClientCertificateData, u.ClientKeyData = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), kp
	out, err := clientcmd.Write(*cfg)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(root, filepath.FromSlash(nodePath))
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, out, 0o600); err != nil {
		t.Fatal(err)
	}
}
