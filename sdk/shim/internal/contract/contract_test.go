package contract

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestCValue(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		v    any
		want string
	}{
		{"tej/2", `"tej/2"`},
		{`say "hi" \ bye`, `"say \"hi\" \\ bye"`},
		{"what??=", `"what\?\?="`},
		{"new\nline\x7f", `"new\012line\177"`},
		{"ü1", `"\303\2741"`},
		{char('C'), `'C'`},
		{char('\''), `'\''`},
		{char('\\'), `'\\'`},
		{char(0), `'\000'`},
		{40, "40"},
		{-1, "(-1)"},
		{10 * time.Millisecond, "10000000LL"},
	} {
		if got := cValue(c.v); got != c.want {
			t.Errorf("cValue(%#v) = %s, want %s", c.v, got, c.want)
		}
	}
}

// TestHeaderReadsBackInC: a C program including the header sees every
// value as Go does.
func TestHeaderReadsBackInC(t *testing.T) {
	t.Parallel()
	cc, err := exec.LookPath("cc")
	if err != nil {
		t.Skip("no C compiler")
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "contract.h"), Header(), 0o600); err != nil {
		t.Fatal(err)
	}
	all := slices.Concat(defs, siginfoDefs)
	// Each value, then a NUL.
	var prog strings.Builder
	prog.WriteString("#include <stdio.h>\n#include \"contract.h\"\nint main(void) {\n")
	for _, d := range all {
		switch d.value.(type) {
		case string:
			fmt.Fprintf(&prog, "\tfwrite(%s, 1, sizeof %s - 1, stdout);\n", d.name, d.name)
		case char:
			fmt.Fprintf(&prog, "\tputchar(%s);\n", d.name)
		default:
			fmt.Fprintf(&prog, "\tprintf(\"%%lld\", (long long)%s);\n", d.name)
		}
		prog.WriteString("\tputchar(0);\n")
	}
	prog.WriteString("\treturn 0;\n}\n")
	src, bin := filepath.Join(dir, "values.c"), filepath.Join(dir, "values")
	if err := os.WriteFile(src, []byte(prog.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(cc, "-Wall", "-Werror", "-o", bin, src).CombinedOutput(); err != nil {
		t.Fatalf("compiling a program of the header: %v\n%s", err, out)
	}
	out, err := exec.Command(bin).Output()
	if err != nil {
		t.Fatal(err)
	}
	got := bytes.Split(bytes.TrimSuffix(out, []byte{0}), []byte{0})
	if len(got) != len(all) {
		t.Fatalf("the program printed %d values, want %d", len(got), len(all))
	}
	for i, d := range all {
		var want string
		switch v := d.value.(type) {
		case string:
			want = v
		case char:
			want = string([]byte{byte(v)})
		case int:
			want = strconv.Itoa(v)
		case time.Duration:
			want = strconv.FormatInt(int64(v), 10)
		}
		if string(got[i]) != want {
			t.Errorf("%s is %q in C, %q in Go", d.name, got[i], want)
		}
	}
}
