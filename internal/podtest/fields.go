package podtest

import (
	"fmt"
	"reflect"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// setFields lists, by their JSON paths under prefix, the fields of v (a
// value or pointer of the Kubernetes API types) that are set. It looks at
// every field the types have, so a field added to k8s.io/api later is
// reported, not ignored, until the translation learns it.
//
// A struct that is present but empty (`emptyDir: {}`) counts as set: its
// presence alone means something. A map is reported with its keys.
func setFields(prefix string, v any) []string {
	var out []string
	walkFields(prefix, reflect.ValueOf(v), &out)
	return out
}

func walkFields(path string, v reflect.Value, out *[]string) {
	switch v.Kind() {
	case reflect.Invalid:
		return
	case reflect.Pointer, reflect.Interface:
		if v.IsNil() {
			return
		}
		e := v.Elem()
		if e.Kind() == reflect.Struct && walkable(e.Type()) {
			before := len(*out)
			walkFields(path, e, out)
			if len(*out) == before {
				*out = append(*out, orRoot(path))
			}
			return
		}
		*out = append(*out, orRoot(path))
	case reflect.Struct:
		if !walkable(v.Type()) {
			if !v.IsZero() {
				*out = append(*out, orRoot(path))
			}
			return
		}
		t := v.Type()
		for i := range t.NumField() {
			f := t.Field(i)
			if !f.IsExported() {
				continue
			}
			name, inline := jsonName(f)
			p := path
			if !inline {
				p = join(path, name)
			}
			walkFields(p, v.Field(i), out)
		}
	case reflect.Slice, reflect.Array:
		if v.Len() == 0 {
			return
		}
		et := v.Type().Elem()
		if et.Kind() == reflect.Struct && walkable(et) {
			for i := range v.Len() {
				walkFields(fmt.Sprintf("%s[%d]", path, i), v.Index(i), out)
			}
			return
		}
		*out = append(*out, orRoot(path))
	case reflect.Map:
		if v.Len() == 0 {
			return
		}
		var keys []string
		for _, k := range v.MapKeys() {
			keys = append(keys, fmt.Sprint(k.Interface()))
		}
		slices.Sort(keys)
		*out = append(*out, fmt.Sprintf("%s[%s]", orRoot(path), strings.Join(keys, ",")))
	default:
		if !v.IsZero() {
			*out = append(*out, orRoot(path))
		}
	}
}

var (
	corePkg    = reflect.TypeFor[corev1.Pod]().PkgPath()
	objectMeta = reflect.TypeFor[metav1.ObjectMeta]()
	typeMeta   = reflect.TypeFor[metav1.TypeMeta]()
)

// walkable tells the API's own structs, whose fields are looked into, from
// values that are structs underneath (a Quantity, a Time, an IntOrString).
func walkable(t reflect.Type) bool {
	return t.PkgPath() == corePkg || t == objectMeta || t == typeMeta
}

// jsonName is a field's name in the JSON form, and whether its fields are
// inlined into its parent's.
func jsonName(f reflect.StructField) (string, bool) {
	tag := f.Tag.Get("json")
	name, opts, _ := strings.Cut(tag, ",")
	if name == "" && (f.Anonymous || strings.Contains(","+opts+",", ",inline,")) {
		return "", true
	}
	if name == "" {
		name = f.Name
	}
	return name, false
}

func join(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

func orRoot(path string) string {
	if path == "" {
		return "(the object)"
	}
	return path
}
