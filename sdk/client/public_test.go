package client

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestClientPublicAPIDocumented: sdk/ is a public API, so every exported
// identifier of the package says what it is.
func TestClientPublicAPIDocumented(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, parser.ParseComments)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range f.Decls {
			switch d := d.(type) {
			case *ast.FuncDecl:
				if d.Name.IsExported() && d.Doc == nil {
					t.Errorf("%s: %s has no doc comment", name, d.Name.Name)
				}
			case *ast.GenDecl:
				for _, s := range d.Specs {
					checkSpec(t, name, d, s)
				}
			}
		}
	}
}

func checkSpec(t *testing.T, file string, d *ast.GenDecl, s ast.Spec) {
	t.Helper()
	switch s := s.(type) {
	case *ast.TypeSpec:
		if s.Name.IsExported() && d.Doc == nil && s.Doc == nil {
			t.Errorf("%s: type %s has no doc comment", file, s.Name.Name)
		}
		if st, ok := s.Type.(*ast.StructType); ok && s.Name.IsExported() {
			for _, f := range st.Fields.List {
				for _, n := range f.Names {
					if n.IsExported() && f.Doc == nil {
						t.Errorf("%s: field %s.%s has no doc comment", file, s.Name.Name, n.Name)
					}
				}
			}
		}
	case *ast.ValueSpec:
		for _, n := range s.Names {
			if n.IsExported() && d.Doc == nil && s.Doc == nil {
				t.Errorf("%s: %s has no doc comment", file, n.Name)
			}
		}
	}
}

// TestClientImportsNoHost: the client is built against sdk/ and the
// Kubernetes API types only, so that it can be used without the host.
func TestClientImportsNoHost(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Skipf("go list is not available: %v", err)
	}
	for _, dep := range strings.Fields(string(out)) {
		for _, banned := range []string{"/task-executor/host", "/task-executor/plugins", "/task-executor/internal"} {
			if strings.Contains(dep, banned) {
				t.Errorf("sdk/client depends on %s", dep)
			}
		}
	}
}
