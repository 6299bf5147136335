package transport

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/kubecpr/kubecpr/recovery/cluster/transport/sshtest"
)

func TestZZTiming(t *testing.T) {
	srv := sshtest.Start(t)
	s, err := DialSSH(context.Background(), SSHConfig{Node: "n", User: "root", Host: srv.Host, Port: srv.Port, IdentityFile: srv.IdentityFile, KnownHostsFiles: []string{srv.KnownHostsFile}})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		st := time.Now()
		s.Run(context.Background(), []string{"true"}, nil, nil)
		t1 := time.Since(st)
		st = time.Now()
		s.run(context.Background(), []string{"true"}, strings.NewReader(""), nil, nil)
		t2 := time.Since(st)
		st = time.Now()
		sess, _ := s.client.NewSession()
		t3 := time.Since(st)
		sess.Run("true")
		t4 := time.Since(st)
		t.Logf("watchdog %v plain %v newsession %v raw %v", t1, t2, t3, t4)
	}
}
