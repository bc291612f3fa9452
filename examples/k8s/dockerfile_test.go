package k8s

import (
	"bufio"
	"encoding/json"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// repoRoot is the repository's root, where the Dockerfile is.
const repoRoot = "../.."

// instruction is one Dockerfile instruction, its continuation lines
// joined.
type instruction struct {
	line  int
	cmd   string // upper case
	args  string
	stage int // index of the FROM it follows
}

func parseDockerfile(t *testing.T) []instruction {
	t.Helper()
	f, err := os.Open(filepath.Join(repoRoot, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []instruction
	var cur strings.Builder
	start, stage := 0, -1
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if cur.Len() == 0 && (line == "" || strings.HasPrefix(line, "#")) {
			continue
		}
		if cur.Len() == 0 {
			start = n
		}
		if body, more := strings.CutSuffix(line, `\`); more {
			cur.WriteString(body + " ")
			continue
		}
		cur.WriteString(line)
		cmd, args, _ := strings.Cut(cur.String(), " ")
		cmd = strings.ToUpper(cmd)
		if cmd == "FROM" {
			stage++
		}
		out = append(out, instruction{line: start, cmd: cmd, args: strings.TrimSpace(args), stage: stage})
		cur.Reset()
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestDockerfile checks what can be checked of the Dockerfile without a
// container engine: that what it copies exists, that it builds static
// binaries, and that it installs them where the host and the plugins look
// for each other.
func TestDockerfile(t *testing.T) {
	ins := parseDockerfile(t)
	var froms []instruction
	for _, in := range ins {
		if in.cmd == "FROM" {
			froms = append(froms, in)
		}
	}
	if len(froms) != 2 {
		t.Fatalf("want two stages (builder, image), got %d", len(froms))
	}

	// The builder's Go is the one go.mod asks for.
	gomod, err := os.ReadFile(filepath.Join(repoRoot, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindSubmatch(gomod)
	if m == nil {
		t.Fatal("go.mod has no go directive")
	}
	if want := "golang:" + string(m[1]) + "-"; !strings.HasPrefix(froms[0].args, want) || !strings.HasSuffix(froms[0].args, " AS build") {
		t.Errorf("line %d: the builder is FROM %s; want %s... AS build", froms[0].line, froms[0].args, want)
	}

	var static, makeBuild, musl bool
	workdir := "/"
	// installed maps a path in the image to the path in the builder it
	// comes from.
	installed := map[string]string{}
	var entrypoint []string
	for _, in := range ins {
		switch {
		case in.stage == 0 && in.cmd == "ENV" && strings.Contains(in.args, "CGO_ENABLED=0"):
			static = true
		case in.stage == 0 && in.cmd == "RUN" && strings.Contains(in.args, "musl-tools"):
			musl = true
		case in.stage == 0 && in.cmd == "RUN" && strings.TrimSpace(in.args) == "make build":
			makeBuild = true
		case in.stage == 0 && in.cmd == "WORKDIR":
			workdir = path.Join(workdir, in.args)
		case in.cmd == "COPY":
			fields := strings.Fields(in.args)
			from := ""
			if v, ok := strings.CutPrefix(fields[0], "--from="); ok {
				from, fields = v, fields[1:]
			}
			srcs, dst := fields[:len(fields)-1], fields[len(fields)-1]
			for _, src := range srcs {
				if from == "" {
					if _, err := os.Stat(filepath.Join(repoRoot, src)); err != nil {
						t.Errorf("line %d: COPY source %s is not in the repository: %v", in.line, src, err)
					}
					continue
				}
				if from != "build" || in.stage != 1 {
					t.Errorf("line %d: COPY --from=%s in stage %d; want --from=build in the image", in.line, from, in.stage)
					continue
				}
				target := dst
				if strings.HasSuffix(dst, "/") && !strings.HasSuffix(src, "/") {
					target = path.Join(dst, path.Base(src))
				}
				installed[path.Clean(target)] = path.Clean(src)
			}
		case in.stage == 1 && in.cmd == "ENTRYPOINT":
			if err := json.Unmarshal([]byte(in.args), &entrypoint); err != nil {
				t.Errorf("line %d: ENTRYPOINT is not in exec form: %v", in.line, err)
			}
		}
	}
	if !static {
		t.Error("the builder does not set CGO_ENABLED=0: the Go binaries would not be static")
	}
	if !musl {
		t.Error("the builder does not install musl-tools, which the Makefile uses for the static shim")
	}
	if !makeBuild {
		t.Error("the builder does not RUN make build")
	}

	// What `make build` leaves in the builder, relative to bin/.
	bin := path.Join(workdir, "bin")
	const host = "/usr/local/bin/task-executor"
	if len(entrypoint) == 0 || entrypoint[0] != host {
		t.Fatalf("ENTRYPOINT is %q; want the host, %s", entrypoint, host)
	}
	want := map[string]string{
		host: path.Join(bin, "task-executor"),
		// The plugins find the shim beside them or one directory up
		// (sdk/shimdriver.FindShim).
		path.Join(path.Dir(host), "task-executor-shim"): path.Join(bin, "task-executor-shim"),
		// The host's default --plugin-dir is plugins/ beside its binary
		// (defaultPluginDir in cmd/task-executor).
		path.Join(path.Dir(host), "plugins"): path.Join(bin, "plugins"),
	}
	for dst, src := range want {
		if got := installed[dst]; got != src {
			t.Errorf("the image's %s comes from %q; want %s", dst, got, src)
		}
	}

	// And make build does leave them there, the plugins not writable by
	// others (the host refuses them otherwise).
	mk, err := os.ReadFile(filepath.Join(repoRoot, "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{
		"BIN     := bin",
		"-o $(BIN)/task-executor ./cmd/task-executor",
		"-static",
		"-o $(BIN)/task-executor-shim ",
		"-o $(BIN)/plugins/$(p) ./plugins/$(p)",
		"chmod -R go-w $(BIN)/plugins",
	} {
		if !strings.Contains(string(mk), s) {
			t.Errorf("the Makefile lacks %q, which the Dockerfile relies on", s)
		}
	}
}
