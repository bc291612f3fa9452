package host

import (
	"os/exec"
	"strings"
	"testing"
)

// TestImportsNoPlugin: the host reaches every runtime through the SDK; only
// cmd/task-executor wires the built-in ones in. A host package that
// imported a plugin would tie the core to one runtime's code and
// dependencies.
func TestImportsNoPlugin(t *testing.T) {
	out, err := exec.Command("go", "list", "-e", "-deps", "-f", "{{.ImportPath}}", "./...").Output()
	if err != nil {
		t.Fatalf("go list -deps ./...: %v", err)
	}
	deps := strings.Fields(string(out))
	if len(deps) < 10 {
		t.Fatalf("go list found only %v", deps)
	}
	for _, pkg := range deps {
		if strings.HasPrefix(pkg, "github.com/opensandbox/task-executor/plugins") {
			t.Errorf("a host package depends on %s", pkg)
		}
	}
}
