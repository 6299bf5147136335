package main

import (
	"context"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/urfave/cli/v2"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/client-go/util/retry"

	"github.com/kubecpr/kubecpr/recovery/atomicfile"
	"github.com/kubecpr/kubecpr/recovery/kube"
	"github.com/kubecpr/kubecpr/recovery/node"
	"github.com/kubecpr/kubecpr/recovery/pki"
)

// The admin cluster's copy of a cluster's kubeconfig, as Anthos clusters on
// bare metal keep it (seed 000: `kubectl get secret CLUSTER-kubeconfig -n
// CLUSTER_NAMESPACE -o jsonpath='{.data.value}'`; the namespace is
// cluster-CLUSTER, as `bmctl get config` shows). It is Cluster API's
// kubeconfig secret: name CLUSTER-kubeconfig, the kubeconfig under data key
// "value", type cluster.x-k8s.io/secret, label cluster.x-k8s.io/cluster-name
// (cluster-api util/secret and api/v1beta1 ClusterSecretType).
const (
	secretValueKey     = "value"
	clusterSecretType  = corev1.SecretType("cluster.x-k8s.io/secret")
	clusterNameLabel   = "cluster.x-k8s.io/cluster-name"
	defaultExportUser  = "kubernetes-admin"
	defaultExportValid = 365 * 24 * time.Hour
)

func kubeconfigCommand() *cli.Command {
	return &cli.Command{
		Name:        "kubeconfig",
		Usage:       "kubeconfigs for people off the node",
		Subcommands: []*cli.Command{kubeconfigExportCommand()},
	}
}

func kubeconfigExportCommand() *cli.Command {
	return &cli.Command{
		Name:  "export",
		Usage: "write an admin kubeconfig for a workstation, signed with the cluster CA on this node",
		Description: "A client certificate for --user in --group, signed with the cluster CA found under --root,\n" +
			"with a new key, embedded with the CA certificate and the server URL in one kubeconfig written\n" +
			"atomically, mode 0600. For Anthos clusters on bare metal the workstation's copy lives at\n" +
			"bmctl-workspace/CLUSTER/CLUSTER-kubeconfig and the admin cluster keeps one in the secret\n" +
			"CLUSTER-kubeconfig of namespace cluster-CLUSTER: without --update-admin-cluster-secret the kubectl\n" +
			"command that updates it is printed (docs/anthos.md).",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "out", Usage: "write the kubeconfig to `FILE` (a path on this machine, not under --root), e.g. bmctl-workspace/CLUSTER/CLUSTER-kubeconfig"},
			&cli.BoolFlag{Name: "force", Usage: "replace --out if it exists"},
			&cli.StringFlag{Name: "user", Value: defaultExportUser, Usage: "the certificate's CN: the user the API server sees"},
			&cli.StringSliceFlag{Name: "group", Usage: "an organisation (group) of the certificate, repeatable (default: the groups of the node's admin.conf, kubeadm:cluster-admins on kubeadm 1.29+)"},
			&cli.DurationFlag{Name: "validity", Value: defaultExportValid, Usage: "lifetime of the client certificate, at least 1h (capped at the CA's own expiry)"},
			&cli.StringFlag{Name: "server", Usage: "API server `URL` (default: the server of the node's admin.conf)"},
			&cli.StringFlag{Name: "cluster", Usage: "Anthos cluster `NAME`: names the admin cluster's secret NAME-kubeconfig"},
			&cli.StringFlag{Name: "cluster-namespace", Usage: "namespace of that secret in the admin cluster (default cluster-NAME)"},
			&cli.StringFlag{Name: "admin-kubeconfig", Usage: "the admin cluster's kubeconfig `FILE` (a path on this machine)"},
			&cli.BoolFlag{Name: "update-admin-cluster-secret", Usage: "store the new kubeconfig in the admin cluster's secret (needs --cluster and --admin-kubeconfig)"},
		},
		Action: kubeconfigExport,
	}
}

// exportOptions are the flags of `kubeconfig export`, checked.
type exportOptions struct {
	out, user, server     string
	groups                []string
	validity              time.Duration
	force                 bool
	cluster, namespace    string
	adminKubeconfig       string
	updateSecret          bool
	groupsFromAdminConfig bool
	groupsFromFlag        bool
}

// KubeconfigExport is `kubecpr kubeconfig export -o json|yaml`
// (docs/schema.md): what was written and where, never its content.
type KubeconfigExport struct {
	TypeMeta         `yaml:",inline"`
	Path             string             `json:"path" yaml:"path"`
	User             string             `json:"user" yaml:"user"`
	Groups           []string           `json:"groups" yaml:"groups"`
	GroupsFrom       string             `json:"groupsFrom" yaml:"groupsFrom"` // flag, admin.conf, default
	NotBefore        time.Time          `json:"notBefore" yaml:"notBefore"`
	NotAfter         time.Time          `json:"notAfter" yaml:"notAfter"`
	CappedAtCAExpiry bool               `json:"cappedAtCAExpiry" yaml:"cappedAtCAExpiry"`
	Serial           string             `json:"serial" yaml:"serial"`
	Server           string             `json:"server" yaml:"server"`
	SignedBy         string             `json:"signedBy" yaml:"signedBy"`
	Secret           AdminClusterSecret `json:"secret" yaml:"secret"`
}

// AdminClusterSecret is what became of the admin cluster's copy of the
// kubeconfig.
type AdminClusterSecret struct {
	Action          string `json:"action" yaml:"action"` // printed, created, updated
	Namespace       string `json:"namespace,omitempty" yaml:"namespace,omitempty"`
	Name            string `json:"name,omitempty" yaml:"name,omitempty"`
	Command         string `json:"command,omitempty" yaml:"command,omitempty"`
	AdminKubeconfig string `json:"adminKubeconfig,omitempty" yaml:"adminKubeconfig,omitempty"`
	ResourceVersion string `json:"resourceVersion,omitempty" yaml:"resourceVersion,omitempty"`
}

func exportFlags(c *cli.Context) (exportOptions, error) {
	o := exportOptions{out: c.String("out"), user: strings.TrimSpace(c.String("user")), server: strings.TrimSpace(c.String("server")),
		groups: c.StringSlice("group"), validity: c.Duration("validity"), force: c.Bool("force"), cluster: c.String("cluster"),
		namespace: c.String("cluster-namespace"), adminKubeconfig: c.String("admin-kubeconfig"), updateSecret: c.Bool("update-admin-cluster-secret")}
	o.groupsFromFlag = len(o.groups) > 0
	bad := func(format string, a ...any) (exportOptions, error) {
		return o, withCode(ExitFailed, fmt.Errorf(format, a...))
	}
	if o.out == "" {
		return bad("kubeconfig export: --out FILE is required (for Anthos: bmctl-workspace/CLUSTER/CLUSTER-kubeconfig)")
	}
	if c.String("now") != "" {
		return bad("kubeconfig export: --now is for rehearsing expiry decisions; a kubeconfig for a workstation is signed on the system clock, drop --now")
	}
	if o.validity < time.Hour {
		return bad("--validity %s: the certificate must live at least an hour; the default is one year (%s)", o.validity, defaultExportValid)
	}
	if o.user == "" {
		return bad("--user is empty: name the user the API server should see (default %s)", defaultExportUser)
	}
	for _, g := range o.groups {
		if strings.TrimSpace(g) == "" {
			return bad("--group: an empty group name")
		}
	}
	if o.server != "" && !strings.HasPrefix(o.server, "https://") {
		return bad("--server %q: want an https:// URL, like https://10.200.0.10:6443", o.server)
	}
	if o.cluster != "" {
		if errs := validation.IsDNS1123Subdomain(o.cluster); len(errs) > 0 {
			return bad("--cluster %q: not a cluster name: %s", o.cluster, strings.Join(errs, "; "))
		}
		if o.namespace == "" {
			o.namespace = "cluster-" + o.cluster
		}
	}
	if o.namespace != "" {
		if errs := validation.IsDNS1123Label(o.namespace); len(errs) > 0 {
			return bad("--cluster-namespace %q: not a namespace name: %s", o.namespace, strings.Join(errs, "; "))
		}
	}
	if o.updateSecret && (o.cluster == "" || o.adminKubeconfig == "") {
		return bad("--update-admin-cluster-secret needs --cluster NAME and --admin-kubeconfig FILE (the admin cluster's kubeconfig)")
	}
	if o.adminKubeconfig != "" && !o.updateSecret {
		// Named only for the printed command: it must exist to be useful.
		if _, err := os.Stat(o.adminKubeconfig); err != nil {
			return bad("--admin-kubeconfig %s: %v", o.adminKubeconfig, err)
		}
	}
	abs, err := filepath.Abs(o.out)
	if err != nil {
		return bad("--out %s: %v", o.out, err)
	}
	o.out = abs
	if st, err := os.Lstat(o.out); err == nil {
		if !st.Mode().IsRegular() {
			return bad("--out %s exists and is not a regular file: choose another path", o.out)
		}
		if !o.force {
			return bad("--out %s exists: pass --force to replace it (the old kubeconfig keeps working until its own certificate expires)", o.out)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return bad("--out %s: %v", o.out, err)
	}
	return o, nil
}

// exportCA loads the cluster CA with its key and checks it can sign now.
func exportCA(e *env) (*pki.CA, []byte, error) {
	pkiDir := node.DefaultPKIDir
	if e.cluster != nil && e.cluster.PKIDir != "" {
		pkiDir = e.cluster.PKIDir
	}
	crtPath, keyPath := path.Join(pkiDir, "ca.crt"), path.Join(pkiDir, "ca.key")
	crtPEM, err := e.node.ReadFile(crtPath)
	if err != nil {
		return nil, nil, withCode(ExitPrecondition, fmt.Errorf("the cluster CA certificate %s: %w", crtPath, err))
	}
	cert, err := pki.ParseCertificate(crtPEM)
	if err != nil {
		return nil, nil, withCode(ExitPrecondition, fmt.Errorf("the cluster CA certificate %s: %w", crtPath, err))
	}
	keyPEM, err := e.node.ReadFile(keyPath)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil, withCode(ExitPrecondition, fmt.Errorf("the cluster CA key %s is not on this node (external CA): "+
			"run kubeconfig export on a node that holds it, or have your CA sign a client certificate (CN=USER, O=GROUP, client auth)", keyPath))
	}
	if err != nil {
		return nil, nil, withCode(ExitPrecondition, fmt.Errorf("the cluster CA key %s: %w", keyPath, err))
	}
	key, err := pki.ParsePrivateKey(keyPEM)
	if err != nil {
		return nil, nil, withCode(ExitPrecondition, fmt.Errorf("the cluster CA key %s: %w", keyPath, err))
	}
	if !pki.KeyMatches(cert.PublicKey, key) {
		return nil, nil, withCode(ExitPrecondition, fmt.Errorf("the cluster CA key %s does not match %s", keyPath, crtPath))
	}
	now := time.Now()
	if now.After(cert.NotAfter) || now.Before(cert.NotBefore) {
		return nil, nil, withCode(ExitPrecondition, fmt.Errorf("the cluster CA %s is valid from %s to %s, not now: a certificate it signs would not be trusted (docs/expired-ca.md)",
			crtPath, cert.NotBefore.UTC().Format(time.RFC3339), cert.NotAfter.UTC().Format(time.RFC3339)))
	}
	return &pki.CA{Name: "ca", Cert: cert, Key: key}, crtPEM, nil
}

// adminConfDefaults reads the server URL, the cluster's name and the
// groups of the node's admin.conf; what cannot be read stays empty.
func adminConfDefaults(e *env) (server, clusterName string, groups []string) {
	k, err := e.node.Kubeconfig(node.KubernetesDir + "/admin.conf")
	if err != nil || k.Context == nil {
		return "", "", nil
	}
	server, clusterName = k.Server(), k.Context.Cluster
	if k.User != nil {
		data := k.User.ClientCertificateData
		if len(data) == 0 && k.User.ClientCertificate != "" {
			data, _ = e.node.ReadFile(k.Ref(k.User.ClientCertificate))
		}
		if cert, err := pki.ParseCertificate(data); err == nil {
			groups = cert.Subject.Organization
		}
	}
	return server, clusterName, groups
}

func kubeconfigExport(c *cli.Context) error {
	o, err := exportFlags(c)
	if err != nil {
		return err
	}
	e, err := setup(c)
	if err != nil {
		return err
	}
	ca, caPEM, err := exportCA(e)
	if err != nil {
		return err
	}
	adminServer, clusterName, adminGroups := adminConfDefaults(e)
	if o.server == "" {
		o.server = adminServer
	}
	if o.server == "" && e.cluster != nil && e.cluster.ControlPlaneEndpoint != "" {
		o.server = "https://" + e.cluster.ControlPlaneEndpoint
	}
	if o.server == "" {
		return withCode(ExitFailed, fmt.Errorf("no server URL: %s/admin.conf cannot be read and no controlPlaneEndpoint is known; pass --server https://HOST:6443", node.KubernetesDir))
	}
	if len(o.groups) == 0 {
		o.groups, o.groupsFromAdminConfig = adminGroups, len(adminGroups) > 0
		if len(o.groups) == 0 {
			o.groups = []string{pki.ClusterAdminsGroup}
		}
	}
	if clusterName == "" {
		clusterName = "kubernetes"
	}
	kc, cert, err := signKubeconfig(ca, caPEM, o, clusterName)
	if err != nil {
		return withCode(ExitFailed, err)
	}
	if err := os.MkdirAll(filepath.Dir(o.out), 0o700); err != nil {
		return withCode(ExitFailed, fmt.Errorf("--out %s: %w", o.out, err))
	}
	if err := atomicfile.WriteFile(o.out, kc, atomicfile.Options{Mode: 0o600, ForceMode: true}); err != nil {
		return withCode(ExitFailed, fmt.Errorf("writing --out: %w", err))
	}
	printExport(e.out, o, cert, ca)
	if containsString(o.groups, "system:masters") {
		fmt.Fprintln(c.App.ErrWriter, "kubecpr: note: system:masters bypasses RBAC and cannot be revoked short of replacing the CA; kubeadm 1.29+ keeps it for super-admin.conf and gives admin.conf kubeadm:cluster-admins")
	}
	doc := exportReport(o, cert, ca)
	if !o.updateSecret {
		doc.Secret.Action, doc.Secret.Command = "printed", printSecretCommand(e.out, o)
	} else {
		ctx, cancel := context.WithTimeout(c.Context, 2*time.Minute)
		defer cancel()
		rv, created, err := updateAdminSecret(ctx, o, kc)
		if err != nil {
			return withCode(ExitFailed, fmt.Errorf("the kubeconfig was written to %s, but the admin cluster's secret %s/%s-kubeconfig was not updated: %w",
				o.out, o.namespace, o.cluster, err))
		}
		doc.Secret.Action, doc.Secret.ResourceVersion = "updated", rv
		if created {
			doc.Secret.Action = "created"
		}
		fmt.Fprintf(e.out, "%s secret %s/%s-kubeconfig in the admin cluster (%s, resourceVersion %s)\n", doc.Secret.Action, o.namespace, o.cluster, o.adminKubeconfig, rv)
	}
	if e.machine() {
		return emitOrFail(e, doc)
	}
	return nil
}

// exportReport is the document of an export: the certificate's facts, the
// file's path; the key and the kubeconfig's content are never in it.
func exportReport(o exportOptions, cert *x509.Certificate, ca *pki.CA) KubeconfigExport {
	doc := KubeconfigExport{TypeMeta: typeMeta(kindKubeconfigExport), Path: o.out, User: cert.Subject.CommonName,
		Groups: append([]string{}, cert.Subject.Organization...), GroupsFrom: groupsFrom(o),
		NotBefore: cert.NotBefore.UTC(), NotAfter: cert.NotAfter.UTC(), CappedAtCAExpiry: cert.NotAfter.Equal(ca.Cert.NotAfter),
		Serial: cert.SerialNumber.String(), Server: o.server, SignedBy: ca.Cert.Subject.CommonName}
	if o.cluster != "" {
		doc.Secret.Namespace, doc.Secret.Name = o.namespace, o.cluster+"-kubeconfig"
	}
	if o.adminKubeconfig != "" {
		doc.Secret.AdminKubeconfig = o.adminKubeconfig
		if a, err := filepath.Abs(o.adminKubeconfig); err == nil {
			doc.Secret.AdminKubeconfig = a
		}
	}
	return doc
}

// groupsFrom says where the certificate's groups came from.
func groupsFrom(o exportOptions) string {
	switch {
	case o.groupsFromAdminConfig:
		return "admin.conf"
	case !o.groupsFromFlag:
		return "default" // kubeadm 1.29+ admin.conf's group
	}
	return "flag"
}

// signKubeconfig makes the kubeconfig: a new key (ECDSA P-256 under an
// ECDSA CA, RSA 2048 otherwise, as kubeadm), a client certificate for
// user/groups signed by ca, the CA certificate and the server embedded.
func signKubeconfig(ca *pki.CA, caPEM []byte, o exportOptions, clusterName string) ([]byte, *x509.Certificate, error) {
	key, err := pki.NewLeafKey(ca.Cert.PublicKey)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: o.user, Organization: o.groups},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	cert, err := pki.Renew(tmpl, key.Public(), ca, pki.RenewOptions{Now: time.Now(), Validity: o.validity})
	if err != nil {
		return nil, nil, err
	}
	keyPEM, err := pki.EncodeKey(key)
	if err != nil {
		return nil, nil, err
	}
	ctxName := o.user + "@" + clusterName
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[clusterName] = &clientcmdapi.Cluster{Server: o.server, CertificateAuthorityData: caPEM}
	cfg.AuthInfos[o.user] = &clientcmdapi.AuthInfo{ClientCertificateData: pki.EncodeCertificate(cert), ClientKeyData: keyPEM}
	cfg.Contexts[ctxName] = &clientcmdapi.Context{Cluster: clusterName, AuthInfo: o.user}
	cfg.CurrentContext = ctxName
	b, err := clientcmd.Write(*cfg)
	return b, cert, err
}

func printExport(w io.Writer, o exportOptions, cert *x509.Certificate, ca *pki.CA) {
	src := map[string]string{"flag": "--group", "admin.conf": "as the node's admin.conf", "default": "kubeadm 1.29+ admin.conf default"}[groupsFrom(o)]
	fmt.Fprintf(w, "wrote %s (mode 0600)\n", o.out)
	fmt.Fprintf(w, "  user      %s\n", cert.Subject.CommonName)
	fmt.Fprintf(w, "  groups    %s (%s)\n", strings.Join(cert.Subject.Organization, ", "), src)
	fmt.Fprintf(w, "  valid     %s to %s", cert.NotBefore.UTC().Format(time.RFC3339), cert.NotAfter.UTC().Format(time.RFC3339))
	if cert.NotAfter.Equal(ca.Cert.NotAfter) {
		fmt.Fprint(w, " (capped at the CA's own expiry)")
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "  serial    %s\n", cert.SerialNumber)
	fmt.Fprintf(w, "  server    %s\n", o.server)
	fmt.Fprintf(w, "  signed by %s (the cluster CA)\n", ca.Cert.Subject.CommonName)
}

// printSecretCommand prints, and returns, the one command that stores the
// kubeconfig in the admin cluster's secret: the type is given so that an
// existing Cluster API secret is updated rather than refused (a secret's
// type is immutable), and apply keeps its labels and owner references.
func printSecretCommand(w io.Writer, o exportOptions) string {
	cluster, ns, admin := o.cluster, o.namespace, o.adminKubeconfig
	if cluster == "" {
		cluster, ns = "CLUSTER_NAME", "cluster-CLUSTER_NAME"
	}
	if admin == "" {
		admin = "ADMIN_KUBECONFIG"
	} else if a, err := filepath.Abs(admin); err == nil {
		admin = a
	}
	fmt.Fprintf(w, "\nAnthos clusters on bare metal: copy it to bmctl-workspace/%s/%s-kubeconfig on the admin workstation,\n", cluster, cluster)
	fmt.Fprintln(w, "and update the admin cluster's copy (or run again with --update-admin-cluster-secret --cluster NAME --admin-kubeconfig FILE):")
	cmd := fmt.Sprintf("kubectl --kubeconfig %s -n %s create secret generic %s-kubeconfig --type=%s --from-file=%s=%s --dry-run=client -o yaml | kubectl --kubeconfig %s apply -f -",
		shellWord(admin), ns, cluster, clusterSecretType, secretValueKey, shellWord(o.out), shellWord(admin))
	fmt.Fprintf(w, "  %s\n", cmd)
	return cmd
}

// shellWord quotes s for a POSIX shell when it needs quoting.
func shellWord(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("/._-+=:@%,", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// updateAdminSecret stores kc under data.value of the cluster's kubeconfig
// secret in the admin cluster: an existing secret keeps its type, labels,
// annotations and owner references (only data.value changes); a missing
// one is created the way Cluster API makes it. The namespace must exist:
// its absence means the wrong cluster name.
func updateAdminSecret(ctx context.Context, o exportOptions, kc []byte) (resourceVersion string, created bool, err error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", o.adminKubeconfig)
	if err != nil {
		return "", false, fmt.Errorf("--admin-kubeconfig %s: %w", o.adminKubeconfig, err)
	}
	cfg.Timeout = 30 * time.Second
	cs, err := kube.New(cfg)
	if err != nil {
		return "", false, fmt.Errorf("--admin-kubeconfig %s: %w", o.adminKubeconfig, err)
	}
	name := o.cluster + "-kubeconfig"
	err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
		s, err := cs.GetSecret(ctx, o.namespace, name)
		if apierrors.IsNotFound(err) {
			if _, nerr := cs.GetNamespace(ctx, o.namespace); apierrors.IsNotFound(nerr) {
				return fmt.Errorf("namespace %s does not exist in the admin cluster: check --cluster (kubectl --kubeconfig %s get clusters -A)", o.namespace, o.adminKubeconfig)
			}
			s = &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: o.namespace, Labels: map[string]string{clusterNameLabel: o.cluster}},
				Type: clusterSecretType, Data: map[string][]byte{secretValueKey: kc}}
			s, err = cs.CreateSecret(ctx, o.namespace, s, metav1.CreateOptions{FieldManager: "kubecpr"})
			if err == nil {
				resourceVersion, created = s.ResourceVersion, true
			}
			return err
		}
		if err != nil {
			return err
		}
		if s.Data == nil {
			s.Data = map[string][]byte{}
		}
		s.Data[secretValueKey] = kc
		s, err = cs.UpdateSecret(ctx, o.namespace, s, metav1.UpdateOptions{FieldManager: "kubecpr"})
		if err == nil {
			resourceVersion = s.ResourceVersion
		}
		return err
	})
	return resourceVersion, created, err
}

func containsString(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
