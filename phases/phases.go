// Package phases assembles kubecpr's recovery pipeline from its stages,
// in order. Each stage lives in its own package.
package phases

import (
	"github.com/kubecpr/kubecpr/phases/bounce"
	"github.com/kubecpr/kubecpr/phases/certs"
	"github.com/kubecpr/kubecpr/phases/csr"
	"github.com/kubecpr/kubecpr/phases/diagnose"
	"github.com/kubecpr/kubecpr/phases/kubeconfigs"
	"github.com/kubecpr/kubecpr/phases/verify"
	"github.com/kubecpr/kubecpr/recovery/pipeline"
)

// Backup is the backup stage; the runner itself carries it out so that no
// change can precede it.
var Backup = pipeline.Stage{
	Name:    pipeline.BackupStage,
	Short:   "copy every file the run may touch into a 0700 backup with a sha256 manifest",
	Mutates: true,
}

// All returns the pipeline in order.
func All() []pipeline.Stage {
	return []pipeline.Stage{diagnose.Stage, Backup, certs.Stage, kubeconfigs.Stage, bounce.Stage, csr.Stage, verify.Stage}
}
