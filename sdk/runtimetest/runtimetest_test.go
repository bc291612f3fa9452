package runtimetest

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/opensandbox/task-executor/sdk"
)

func TestShellSpec(t *testing.T) {
	env := []corev1.EnvVar{{Name: "A", Value: "1"}}
	timeout := int64(5)
	tests := []struct {
		name string
		opts SpecOptions
		want sdk.ProcessSpec
	}{
		{"plain", SpecOptions{}, sdk.ProcessSpec{Command: []string{"sh", "-c", "exit 0"}}},
		{"all-options", SpecOptions{Env: env, WorkingDir: "/tmp", TimeoutSeconds: 5},
			sdk.ProcessSpec{Command: []string{"sh", "-c", "exit 0"}, Env: env, WorkingDir: "/tmp", TimeoutSeconds: &timeout}},
		// A zero or negative timeout means none, not "time out at once".
		{"no-timeout", SpecOptions{TimeoutSeconds: -1}, sdk.ProcessSpec{Command: []string{"sh", "-c", "exit 0"}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			spec := ShellSpec("exit 0", tc.opts)
			if spec.Kind() != sdk.KindProcess {
				t.Fatalf("ShellSpec made a spec of kind %q", spec.Kind())
			}
			if !reflect.DeepEqual(*spec.Process, tc.want) {
				t.Errorf("ShellSpec = %+v, want %+v", *spec.Process, tc.want)
			}
		})
	}
}

func TestShellSpecCopiesTimeout(t *testing.T) {
	opts := SpecOptions{TimeoutSeconds: 1}
	a, b := ShellSpec("true", opts), ShellSpec("true", opts)
	if a.Process.TimeoutSeconds == b.Process.TimeoutSeconds {
		t.Errorf("two specs share one TimeoutSeconds pointer; changing one would change the other")
	}
}

func TestMissingCommandSpec(t *testing.T) {
	spec := MissingCommandSpec()
	if spec.Kind() != sdk.KindProcess || len(spec.Process.Argv()) != 1 {
		t.Fatalf("MissingCommandSpec = %+v, want a process spec with one argument", spec)
	}
	for _, dir := range filepath.SplitList(os.Getenv("PATH")) {
		if _, err := os.Stat(filepath.Join(dir, spec.Process.Argv()[0])); err == nil {
			t.Errorf("%s exists in %s; the start-error test would start it", spec.Process.Argv()[0], dir)
		}
	}
}

func TestReadTaskFiles(t *testing.T) {
	tests := []struct {
		name           string
		stdout, stderr *string // nil: the file does not exist
		want           string
	}{
		{"none", nil, nil, ""},
		{"stdout-only", ptr("out\n"), nil, "out\n"},
		{"stderr-only", nil, ptr("err\n"), "err\n"},
		{"both", ptr("out\n"), ptr("err\n"), "out\nerr\n"},
		{"no-final-newline", ptr("out"), ptr("err"), "out\nerr\n"},
		{"empty-files", ptr(""), ptr(""), ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			task := sdk.Task{Name: "t", Dir: t.TempDir()}
			for file, content := range map[string]*string{"stdout.log": tc.stdout, "stderr.log": tc.stderr} {
				if content == nil {
					continue
				}
				if err := os.WriteFile(filepath.Join(task.Dir, file), []byte(*content), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			if got := ReadTaskFiles(t, task); got != tc.want {
				t.Errorf("ReadTaskFiles = %q, want %q", got, tc.want)
			}
		})
	}
}

func ptr(s string) *string { return &s }

func TestTaskNames(t *testing.T) {
	s := &suite{prefix: "ct0a1b2c"}
	seen := map[string]bool{}
	for _, name := range []string{"plain", "UPPER_case", "ünïcode", "---", "a very long test name that goes on and on and on"} {
		t.Run(name, func(t *testing.T) {
			for range 3 {
				n := s.taskName(t)
				if !dns1123Label.MatchString(n) || len(n) > 63 {
					t.Errorf("taskName = %q, not a DNS-1123 label", n)
				}
				if !strings.HasPrefix(n, s.prefix+"-") {
					t.Errorf("taskName = %q lacks the run's prefix %q", n, s.prefix)
				}
				if seen[n] {
					t.Errorf("taskName returned %q twice", n)
				}
				seen[n] = true
			}
		})
	}
}
