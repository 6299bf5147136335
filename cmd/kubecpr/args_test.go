package main

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestNormalizeArgs(t *testing.T) {
	app := newApp()
	for _, tc := range []struct{ in, want string }{
		{"check", "check"},
		{"check --root /n", "--root /n check"},
		{"check -o json --root=/n", "-o json --root=/n check"},
		{"--root /n check", "--root /n check"},
		{"backup restore ID --dry-run", "backup restore --dry-run ID"},
		{"backup restore ID --root B", "--root B backup restore ID"},
		{"run --until kubeconfigs --validity -24h", "run --until kubeconfigs --validity -24h"},
		{"rehearse --now 2026-12-01T00:00:00Z --keep", "--now 2026-12-01T00:00:00Z rehearse --keep"},
		// An unknown flag after an argument is moved, so cli rejects it.
		{"backup restore ID --bogus", "backup restore --bogus ID"},
		{"backup restore -- ID --dry-run", "backup restore -- ID --dry-run"},
		{"run --dry-run=true --root /n", "--root /n run --dry-run=true"},
		{"help run", "help run"},
		{"check --help", "check --help"},
		// -ojson as kubectl takes it (issue 21): -o with its value attached.
		{"check -ojson", "-o=json check"},
		{"-oyaml check --root /n", "-o=yaml --root /n check"},
		{"run --renew-ca --until certs", "run --renew-ca --until certs"},
		{"run --renew-ca=ca,etcd-ca", "run --renew-ca=ca,etcd-ca"},
	} {
		got := normalizeArgs(app, append([]string{"kubecpr"}, strings.Fields(tc.in)...))
		if d := cmp.Diff("kubecpr "+tc.want, strings.Join(got, " ")); d != "" {
			t.Errorf("%q (-want +got):\n%s", tc.in, d)
		}
	}
}
