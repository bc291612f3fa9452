package k8s

import (
	"bufio"
	"encoding/json"
	"os"
	"os/exec"
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
// container engine: that what it copies exists and holds every package the
// executable is built from, that it builds a static executable with the
// shim in it, and that it installs it as the entrypoint and at
// /workspace/server, where upstream's install recipe copies it from.
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
	var links []string
	copied := map[string]bool{}
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
					copied[path.Clean(src)] = true
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
		case in.stage == 1 && in.cmd == "RUN":
			links = append(links, in.args)
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
	want := map[string]string{host: path.Join(bin, "task-executor")}
	for dst, src := range want {
		if got := installed[dst]; got != src {
			t.Errorf("the image's %s comes from %q; want %s", dst, got, src)
		}
	}

	const server = "/workspace/server"
	linked := false
	for _, run := range links {
		linked = linked || strings.Contains(run, "ln -s "+host+" "+server)
	}
	if !linked {
		t.Errorf("the image has no %s pointing at %s (RUN lines of the image: %q)", server, host, links)
	}

	// Every package of this module the executable is built from is copied
	// into the builder.
	out, err := exec.Command("go", "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", "../../cmd/task-executor").Output()
	if err != nil {
		t.Fatalf("go list -deps ./cmd/task-executor: %v", err)
	}
	const module = "github.com/opensandbox/task-executor/"
	for _, pkg := range strings.Fields(string(out)) {
		rel, ok := strings.CutPrefix(pkg, module)
		if !ok {
			continue
		}
		top := strings.SplitN(rel, "/", 2)[0]
		if !copied[top] {
			t.Errorf("the builder does not COPY %s/, which holds %s", top, pkg)
		}
	}

	// And make build does leave it there, with the shim compiled statically
	// and embedded.
	mk, err := os.ReadFile(filepath.Join(repoRoot, "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{
		"BIN     := bin",
		"-static",
		"-o $(BIN)/task-executor-shim ",
		"-tags embedshim -overlay $(BIN)/.overlay.json -o $(BIN)/task-executor ./cmd/task-executor",
	} {
		if !strings.Contains(string(mk), s) {
			t.Errorf("the Makefile lacks %q, which the Dockerfile relies on", s)
		}
	}
}
