// Package config loads YAML configuration strictly: every key in the file must
// name a field of the destination struct, values are decoded onto a struct
// that already holds the defaults, and every problem — unknown key, wrong
// type, failed validation — is reported as "file:line: key.path: message".
package config

import (
	"errors"
	"fmt"
	"os"
	"reflect"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"
)

// Validator is implemented by configuration sections. Validate reports each
// problem through v; it must not stop at the first one.
type Validator interface {
	Validate(v *V)
}

// Problem is one thing wrong with a configuration file.
type Problem struct {
	File string
	Line int // 0 when the key is not in the file (a default was used)
	Path string
	Msg  string
}

func (p Problem) String() string {
	var b strings.Builder
	b.WriteString(p.File)
	if p.Line > 0 {
		fmt.Fprintf(&b, ":%d", p.Line)
	}
	b.WriteString(": ")
	if p.Path != "" {
		b.WriteString(p.Path)
		b.WriteString(": ")
	}
	b.WriteString(p.Msg)
	return b.String()
}

// Error holds every problem found in one file.
type Error struct {
	Problems []Problem
}

func (e *Error) Error() string {
	lines := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		lines[i] = p.String()
	}
	return strings.Join(lines, "\n")
}

// ErrInvalid is matched by errors.Is for every *Error.
var ErrInvalid = errors.New("invalid configuration")

// Is makes errors.Is(err, ErrInvalid) true.
func (e *Error) Is(target error) bool { return target == ErrInvalid }

// V collects validation problems for one file. Sections call Check or Errorf
// with paths relative to the section they were handed by In.
type V struct {
	file     string
	prefix   string
	lines    map[string]int
	problems *[]Problem
}

// In returns a validator whose paths are relative to the named section.
func (v *V) In(section string) *V {
	c := *v
	c.prefix = join(v.prefix, section)
	return &c
}

// Errorf records a problem with key (relative to the current section).
func (v *V) Errorf(key, format string, args ...any) {
	path := join(v.prefix, key)
	*v.problems = append(*v.problems, Problem{File: v.file, Line: v.lineOf(path), Path: path, Msg: fmt.Sprintf(format, args...)})
}

// Check records a problem when ok is false.
func (v *V) Check(ok bool, key, format string, args ...any) {
	if !ok {
		v.Errorf(key, format, args...)
	}
}

// File names the file being validated, for messages that refer to it.
func (v *V) File() string { return v.file }

// lineOf finds the line of the key, or of its nearest ancestor in the file.
func (v *V) lineOf(path string) int {
	for p := path; p != ""; {
		if l, ok := v.lines[p]; ok {
			return l
		}
		i := strings.LastIndexAny(p, ".[")
		if i < 0 {
			break
		}
		p = p[:i]
	}
	return 0
}

func join(prefix, key string) string {
	switch {
	case prefix == "":
		return key
	case key == "":
		return prefix
	case strings.HasPrefix(key, "["):
		return prefix + key
	}
	return prefix + "." + key
}

// Load reads file and decodes it onto dst, which must be a pointer to a struct
// holding the defaults. If dst implements Validator it is validated too.
// The returned error is an *Error listing every problem.
func Load(file string, dst any) error {
	data, err := os.ReadFile(file)
	if err != nil {
		return &Error{Problems: []Problem{{File: file, Msg: describeReadError(err)}}}
	}
	return Decode(file, data, dst)
}

func describeReadError(err error) string {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return "cannot read: " + pe.Err.Error()
	}
	return "cannot read: " + err.Error()
}

// Decode is Load on bytes already read; file is used in messages.
func Decode(file string, data []byte, dst any) error {
	var problems []Problem
	lines := map[string]int{}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		line, msg := splitYAMLError(err.Error())
		return &Error{Problems: []Problem{{File: file, Line: line, Msg: msg}}}
	}
	rv := reflect.ValueOf(dst)
	if rv.Kind() != reflect.Pointer || rv.Elem().Kind() != reflect.Struct {
		panic("config.Decode: dst must be a pointer to a struct")
	}
	if len(doc.Content) > 0 {
		d := decoder{file: file, lines: lines, problems: &problems}
		d.value(doc.Content[0], rv.Elem(), "")
	}
	if val, ok := dst.(Validator); ok {
		// Validate even after decoding problems so that every problem is
		// reported at once, but not a second time for a key that already
		// failed to decode (it holds its default).
		var vp []Problem
		val.Validate(&V{file: file, lines: lines, problems: &vp})
		failed := map[string]bool{}
		for _, p := range problems {
			failed[p.Path] = true
		}
		for _, p := range vp {
			if !failed[p.Path] {
				problems = append(problems, p)
			}
		}
	}
	if len(problems) > 0 {
		// In file order; problems without a line (defaults) last.
		sort.SliceStable(problems, func(i, j int) bool {
			li, lj := problems[i].Line, problems[j].Line
			if li == 0 || lj == 0 {
				return li != 0 && lj == 0
			}
			return li < lj
		})
		return &Error{Problems: problems}
	}
	return nil
}

type decoder struct {
	file     string
	lines    map[string]int
	problems *[]Problem
}

func (d *decoder) errorf(line int, path, format string, args ...any) {
	*d.problems = append(*d.problems, Problem{File: d.file, Line: line, Path: path, Msg: fmt.Sprintf(format, args...)})
}

var unmarshalerType = reflect.TypeFor[yaml.Unmarshaler]()

// value decodes node onto v. Structs are walked key by key so that unknown
// keys and bad values are reported with their own line and path; anything
// else is handed to yaml.v3 as a whole.
func (d *decoder) value(node *yaml.Node, v reflect.Value, path string) {
	if node.Kind == yaml.AliasNode {
		node = node.Alias
	}
	isStruct := v.Kind() == reflect.Struct && !reflect.PointerTo(v.Type()).Implements(unmarshalerType)
	switch {
	case isStruct && node.Kind == yaml.MappingNode:
		d.mapping(node, v, path)
	case isStruct && node.Tag == "!!null":
		// an empty section keeps its defaults
	case isStruct:
		d.errorf(node.Line, path, "must be a mapping of keys, not %s", describe(node))
	case v.Kind() == reflect.Slice && node.Kind == yaml.SequenceNode && isWalkable(v.Type().Elem()):
		s := reflect.MakeSlice(v.Type(), len(node.Content), len(node.Content))
		for i, item := range node.Content {
			p := fmt.Sprintf("%s[%d]", path, i)
			d.lines[p] = item.Line
			d.value(item, s.Index(i), p)
		}
		v.Set(s)
	default:
		target := reflect.New(v.Type())
		target.Elem().Set(v)
		if err := node.Decode(target.Interface()); err != nil {
			_, msg := splitYAMLError(err.Error())
			d.errorf(node.Line, path, "%s", msg)
			return
		}
		v.Set(target.Elem())
	}
}

func isWalkable(t reflect.Type) bool {
	return t.Kind() == reflect.Struct && !reflect.PointerTo(t).Implements(unmarshalerType)
}

func (d *decoder) mapping(node *yaml.Node, v reflect.Value, path string) {
	fields := yamlFields(v.Type())
	seen := map[string]bool{}
	for i := 0; i+1 < len(node.Content); i += 2 {
		k, val := node.Content[i], node.Content[i+1]
		if k.Tag == "!!merge" { // "<<: *anchor" merges another mapping's keys
			merged := []*yaml.Node{val}
			if val.Kind == yaml.SequenceNode {
				merged = val.Content
			}
			for _, m := range merged {
				d.value(m, v, path)
			}
			continue
		}
		key := k.Value
		p := join(path, key)
		if seen[key] {
			d.errorf(k.Line, p, "duplicate key")
			continue
		}
		seen[key] = true
		idx, ok := fields[key]
		if !ok {
			d.errorf(k.Line, p, "unknown key%s", suggest(key, fields))
			continue
		}
		d.lines[p] = k.Line
		d.value(val, v.Field(idx), p)
	}
}

// yamlFields maps YAML key names to exported field indexes.
func yamlFields(t reflect.Type) map[string]int {
	m := map[string]int{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name := strings.Split(f.Tag.Get("yaml"), ",")[0]
		if name == "-" {
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		m[name] = i
	}
	return m
}

func suggest(key string, fields map[string]int) string {
	names := make([]string, 0, len(fields))
	for n := range fields {
		names = append(names, n)
	}
	sort.Strings(names)
	return " (known keys: " + strings.Join(names, ", ") + ")"
}

func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		return fmt.Sprintf("the value %q", n.Value)
	}
	return "this value"
}

// splitYAMLError turns "yaml: line 3: msg" or "line 3: msg" into (3, "msg").
func splitYAMLError(s string) (int, string) {
	s = strings.TrimPrefix(s, "yaml: ")
	s = strings.TrimPrefix(s, "unmarshal errors:\n  ")
	var line int
	if n, err := fmt.Sscanf(s, "line %d:", &line); n == 1 && err == nil {
		if i := strings.Index(s, ": "); i >= 0 {
			return line, strings.TrimSpace(s[i+2:])
		}
	}
	return 0, s
}
