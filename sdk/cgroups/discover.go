package cgroups

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// Membership is one line of /proc/<pid>/cgroup: a hierarchy and the
// process's cgroup in it. A runtime that places tasks in another process's
// cgroups (a container's) reads that process's memberships.
type Membership struct {
	// V2 marks the unified hierarchy (the line "0::PATH").
	V2 bool
	// Controllers are a v1 hierarchy's controllers, or "name=..." for a
	// named one; none for v2.
	Controllers []string
	// Path is the process's cgroup in the hierarchy, relative to the
	// reader's cgroup namespace ("/.." and below when outside it).
	Path string
}

// ParseMemberships parses the contents of /proc/<pid>/cgroup. A malformed
// line, a v1 line without a controller, or no line at all is an error.
func ParseMemberships(b []byte) ([]Membership, error) {
	var cgs []Membership
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if sc.Text() == "" {
			continue
		}
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 || !strings.HasPrefix(parts[2], "/") {
			return nil, fmt.Errorf("malformed cgroup line %q", sc.Text())
		}
		cg := Membership{Path: parts[2], V2: parts[0] == "0" && parts[1] == ""}
		if !cg.V2 {
			if parts[1] == "" {
				return nil, fmt.Errorf("cgroup line %q names no controller", sc.Text())
			}
			cg.Controllers = strings.Split(parts[1], ",")
		}
		cgs = append(cgs, cg)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(cgs) == 0 {
		return nil, errors.New("no cgroup hierarchy")
	}
	return cgs, nil
}

// mountEntry is a cgroup file system's line of /proc/<pid>/mountinfo.
type mountEntry struct {
	v2 bool
	// root is the cgroup shown at point: "/" for a whole hierarchy, the
	// cgroup's path for a bind mount of a subtree (a container's
	// /sys/fs/cgroup without a cgroup namespace), relative to the reader's
	// cgroup namespace ("/.." and below when outside it).
	root  string
	point string
	// options are the super block's options: the controllers of a v1
	// hierarchy are among them.
	options []string
}

// parseMountinfo returns the cgroup and cgroup2 mounts of a mountinfo file
// (proc(5)): "ID PARENT MAJ:MIN ROOT POINT OPTS [OPTIONAL...] - TYPE SOURCE
// SUPEROPTS".
func parseMountinfo(b []byte) ([]mountEntry, error) {
	var mounts []mountEntry
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 {
			continue
		}
		sep := slices.Index(fields, "-")
		if sep < 6 || len(fields) < sep+4 {
			return nil, fmt.Errorf("malformed mountinfo line %q", sc.Text())
		}
		fsType := fields[sep+1]
		if fsType != "cgroup" && fsType != "cgroup2" {
			continue
		}
		mounts = append(mounts, mountEntry{
			v2:      fsType == "cgroup2",
			root:    unescapeMountinfo(fields[3]),
			point:   unescapeMountinfo(fields[4]),
			options: strings.Split(fields[sep+3], ","),
		})
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return mounts, nil
}

// unescapeMountinfo undoes the kernel's octal escapes (\040 for a space,
// \011, \012, \134) in a mountinfo path.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// tree is one hierarchy the Manager uses, and where its parent cgroup is.
type tree struct {
	v2 bool
	// controllers are a v1 hierarchy's, as /proc/<pid>/cgroup names them.
	controllers []string
	// mountRoot is the cgroup shown at mountPoint.
	mountRoot  string
	mountPoint string
	// parent is the Manager's parent cgroup's path.
	parent string
}

// v2Controllers are what a v2 parent must enable for its task groups.
var v2Controllers = []string{"memory", "cpu"}

// dir is the directory of cgroup cg, which must be at or below mountRoot.
func (t tree) dir(cg string) string {
	rel := cg
	if t.mountRoot != "/" {
		rel = strings.TrimPrefix(cg, t.mountRoot)
	}
	return filepath.Join(t.mountPoint, filepath.FromSlash(rel))
}

// has tells whether the hierarchy has controller c: on v2 the ones the
// Manager enables, and cpuacct's usage, which v2 counts without a controller.
func (t tree) has(c string) bool {
	if t.v2 {
		return c == "cpuacct" || slices.Contains(v2Controllers, c)
	}
	return slices.Contains(t.controllers, c)
}

// name is the hierarchy's name for messages.
func (t tree) name() string {
	if t.v2 {
		return "cgroup2"
	}
	return strings.Join(t.controllers, ",")
}

// matches tells whether a /proc/<pid>/cgroup line is of this hierarchy.
func (t tree) matches(l Membership) bool {
	if t.v2 || l.V2 {
		return t.v2 == l.V2
	}
	return slices.Equal(sorted(l.Controllers), sorted(t.controllers))
}

// oomCounter is the file that counts the OOM kills of a cgroup of this
// hierarchy, "" if it has no memory controller.
func (t tree) oomCounter() string {
	switch {
	case t.v2:
		return "memory.events"
	case t.has("memory"):
		return "memory.oom_control"
	}
	return ""
}

// makeParent makes the parent cgroup (mkdir -p) and makes it ready to hold
// task groups.
func (t tree) makeParent() error {
	if t.v2 {
		// Level by level, so that a level that cannot enable the
		// controllers is not left with a cgroup below it.
		return t.enableControllers()
	}
	dir := t.dir(t.parent)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("%w: while creating the parent cgroup in %s: %w", ErrUnavailable, t.name(), err)
	}
	if err := accessWrite(dir); err != nil {
		return fmt.Errorf("%w: while checking that the parent cgroup %s can take task groups: %w", ErrUnavailable, dir, err)
	}
	if t.has("cpuset") {
		for _, d := range t.chain()[1:] {
			if err := inheritCpuset(d); err != nil {
				return fmt.Errorf("%w: while creating the parent cgroup in %s: %w", ErrUnavailable, t.name(), err)
			}
		}
	}
	return nil
}

// chain lists the directories from the mount point down to the parent.
func (t tree) chain() []string {
	dirs := []string{t.mountPoint}
	rel := t.parent
	if t.mountRoot != "/" {
		rel = strings.TrimPrefix(rel, t.mountRoot)
	}
	cur := t.mountPoint
	for c := range strings.SplitSeq(strings.Trim(rel, "/"), "/") {
		if c != "" {
			cur = filepath.Join(cur, c)
			dirs = append(dirs, cur)
		}
	}
	return dirs
}

// selectTrees picks the hierarchies to use and where the parent cgroup is in
// each, from the executor's cgroups and the cgroup mounts. controllersOf
// reads a v2 cgroup's cgroup.controllers.
func selectTrees(cgs []Membership, mounts []mountEntry, parent, id string, controllersOf func(dir string) ([]string, error)) ([]tree, []string, error) {
	target, err := parentPath(parent, id)
	if err != nil {
		return nil, nil, err
	}
	var trees []tree
	var warnings, reasons []string
	for _, cg := range cgs {
		if cg.V2 || !slices.ContainsFunc(cg.Controllers, func(c string) bool { return c == "memory" || c == "cpu" || c == "cpuacct" }) {
			continue
		}
		t, reason, err := place(cg, mounts, target)
		if err != nil {
			return nil, nil, err
		}
		if reason != "" {
			warnings = append(warnings, reason)
			continue
		}
		trees = append(trees, t)
	}
	if len(trees) == 0 {
		reasons = append(reasons, warnings...)
		warnings = nil
		for _, cg := range cgs {
			if !cg.V2 {
				continue
			}
			t, reason, err := place(cg, mounts, target)
			if err != nil {
				return nil, nil, err
			}
			if reason != "" {
				reasons = append(reasons, reason)
				continue
			}
			avail, err := controllersOf(t.mountPoint)
			if err != nil {
				return nil, nil, fmt.Errorf("%w: while reading the controllers of the cgroup v2 hierarchy at %s: %w", ErrUnavailable, t.mountPoint, err)
			}
			if missing := missingOf(v2Controllers, avail); len(missing) > 0 {
				reasons = append(reasons, fmt.Sprintf("the cgroup v2 hierarchy at %s offers the controllers %q, not %s", t.mountPoint, strings.Join(avail, " "), strings.Join(missing, " and ")))
				continue
			}
			trees = append(trees, t)
		}
	}
	if len(trees) == 0 {
		msg := "no cgroup hierarchy with the memory, cpu or cpuacct controller is mounted where this process can see it"
		if len(reasons) > 0 {
			msg += ": " + strings.Join(reasons, "; ")
		}
		return nil, nil, fmt.Errorf("%w: %s (looked at /proc/self/cgroup and /proc/self/mountinfo)", ErrUnavailable, msg)
	}
	has := func(c string) bool { return slices.ContainsFunc(trees, func(t tree) bool { return t.has(c) }) }
	if !has("memory") {
		warnings = append(warnings, "no cgroup hierarchy has the memory controller: tasks' memory limits are not enforced and their OOM kills not counted")
	}
	if !has("cpu") {
		warnings = append(warnings, "no cgroup hierarchy has the cpu controller: tasks' CPU limits and requests are not enforced")
	}
	if !has("cpuacct") {
		warnings = append(warnings, "no cgroup hierarchy has the cpuacct controller: tasks' CPU usage is not counted")
	}
	return trees, warnings, nil
}

// parentPath is the parent's cgroup path given the executor's own in a
// hierarchy, or a function of the executor's own cgroup for parent "".
func parentPath(parent, id string) (func(own string) (string, error), error) {
	if parent == "" {
		name := "task-executor-" + id
		if err := validName(name); err != nil {
			return nil, fmt.Errorf("while naming the parent cgroup from id %q: %w", id, err)
		}
		return func(own string) (string, error) {
			if own == "/.." || strings.HasPrefix(own, "/../") {
				return "", fmt.Errorf("%w: the executor's cgroup %s is outside its cgroup namespace, so its cgroup cannot be reached; give an absolute parent", ErrUnavailable, own)
			}
			return path.Join(own, name), nil
		}, nil
	}
	if !strings.HasPrefix(parent, "/") || strings.ContainsAny(parent, "\x00\n") {
		return nil, fmt.Errorf("while choosing the parent cgroup: %q is neither \"\" nor an absolute cgroup path", parent)
	}
	p := path.Clean(parent)
	return func(string) (string, error) { return p, nil }, nil
}

// place finds the mount that shows cg's hierarchy at the parent. reason
// says why the hierarchy cannot be used when there is no mount of it at
// all; an error, when it is mounted but the parent is outside every mount.
func place(cg Membership, mounts []mountEntry, target func(string) (string, error)) (tree, string, error) {
	t := tree{v2: cg.V2, controllers: cg.Controllers}
	parent, err := target(cg.Path)
	if err != nil {
		return tree{}, "", err
	}
	var best *mountEntry
	var seen []string
	for i, m := range mounts {
		if m.v2 != cg.V2 {
			continue
		}
		if !cg.V2 && missingOf(cg.Controllers, m.options) != nil {
			continue
		}
		seen = append(seen, fmt.Sprintf("%s shows %s", m.point, m.root))
		if pathHasPrefix(parent, m.root) && (best == nil || len(m.root) < len(best.root)) {
			best = &mounts[i]
		}
	}
	if len(seen) == 0 {
		return tree{}, fmt.Sprintf("the cgroup hierarchy %s is not mounted", t.name()), nil
	}
	if best == nil {
		return tree{}, "", fmt.Errorf("%w: the parent cgroup %s of hierarchy %s is outside every mount of it (%s)", ErrUnavailable, parent, t.name(), strings.Join(seen, ", "))
	}
	t.mountRoot, t.mountPoint, t.parent = best.root, best.point, parent
	return t, "", nil
}

// readControllers reads a v2 cgroup's cgroup.controllers.
func readControllers(dir string) ([]string, error) {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.controllers"))
	if err != nil {
		return nil, err
	}
	return strings.Fields(string(b)), nil
}

// pathHasPrefix tells whether cgroup p is prefix or below it.
func pathHasPrefix(p, prefix string) bool {
	return prefix == "/" || p == prefix || strings.HasPrefix(p, prefix+"/")
}

// missingOf returns the elements of want not in have.
func missingOf(want, have []string) []string {
	var missing []string
	for _, w := range want {
		if !slices.Contains(have, w) {
			missing = append(missing, w)
		}
	}
	return missing
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}
