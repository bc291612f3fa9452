package shim

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"testing"
	"time"
)

// BenchmarkTrueTask: a launched shim runs /bin/true and reports its exit,
// against a bare fork+exec+wait of /bin/true in the same loop. The task
// directory and its output files exist beforehand, as the host's store
// prepares them.
func BenchmarkTrueTask(b *testing.B) {
	for _, capped := range []bool{false, true} {
		b.Run(fmt.Sprintf("relay=%v", capped), func(b *testing.B) {
			l := NewLauncher(shimBin, 2)
			defer l.Close()
			root := b.TempDir()
			var shim, floor []time.Duration
			for i := 0; i < b.N; i++ {
				t0 := time.Now()
				if err := exec.Command("/bin/true").Run(); err != nil {
					b.Fatal(err)
				}
				floor = append(floor, time.Since(t0))
				dir := filepath.Join(root, fmt.Sprint(i))
				if err := os.Mkdir(dir, 0o700); err != nil {
					b.Fatal(err)
				}
				spec := Spec{Argv: []string{"/bin/true"}, Stdout: filepath.Join(dir, "stdout.log"), Stderr: filepath.Join(dir, "stderr.log"), Grace: time.Second}
				for _, f := range []string{spec.Stdout, spec.Stderr} {
					if err := os.WriteFile(f, nil, 0o600); err != nil {
						b.Fatal(err)
					}
				}
				if capped {
					spec.MaxLogBytes = 1 << 20
				}
				t0 = time.Now()
				res, err := l.Launch(context.Background(), dir, spec)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := res.WaitExit(context.Background(), dir); err != nil {
					b.Fatal(err)
				}
				shim = append(shim, time.Since(t0))
				time.Sleep(time.Millisecond) // let the spares refill
			}
			p50 := func(d []time.Duration) time.Duration {
				sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
				return d[len(d)/2]
			}
			b.ReportMetric(float64(p50(shim).Microseconds()), "shim-us")
			b.ReportMetric(float64(p50(floor).Microseconds()), "floor-us")
		})
	}
}
