package bootstraptoken

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/tools/clientcmd"
)

func TestTokenNeverPrintsItsSecret(t *testing.T) {
	tok, err := Generate(time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{tok.String(), fmt.Sprint(tok), fmt.Sprintf("%v %+v %#v %s", tok, tok, tok, tok)} {
		if strings.Contains(s, tok.Secret) {
			t.Errorf("%q shows the token's secret", s)
		}
		if !strings.Contains(s, tok.ID) {
			t.Errorf("%q does not name the token id", s)
		}
	}
	back, err := Parse(" " + tok.Value() + "\n")
	if err != nil || back.ID != tok.ID || back.Secret != tok.Secret {
		t.Errorf("Parse(Value()) = %v, %v", back, err)
	}
	if tok.User() != "system:bootstrap:"+tok.ID {
		t.Errorf("User() = %s", tok.User())
	}
}

func TestParseRefuses(t *testing.T) {
	for _, s := range []string{"", "abcdef", "abcdef.0123456789abcde", "ABCDEF.0123456789abcdef", "abcdef.0123456789abcdef.x", "abcdef:0123456789abcdef"} {
		if _, err := Parse(s); err == nil {
			t.Errorf("Parse(%q) accepted", s)
		}
	}
}

func TestKubeconfig(t *testing.T) {
	tok := Token{ID: "abcdef", Secret: "0123456789abcdef"}
	b, err := Kubeconfig("https://127.0.0.1:6443", []byte("CA PEM"), tok)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := clientcmd.Load(b)
	if err != nil {
		t.Fatal(err)
	}
	ctx := cfg.Contexts[cfg.CurrentContext]
	if ctx == nil || cfg.AuthInfos[ctx.AuthInfo].Token != "abcdef.0123456789abcdef" || cfg.Clusters[ctx.Cluster].Server != "https://127.0.0.1:6443" ||
		string(cfg.Clusters[ctx.Cluster].CertificateAuthorityData) != "CA PEM" {
		t.Errorf("bootstrap kubeconfig:\n%s", b)
	}
	if _, err := Kubeconfig("", []byte("x"), tok); err == nil {
		t.Error("no server accepted")
	}
}
