// Package static is a directory read from a YAML file: people, their addresses
// and optionally their Mattermost username. It is loaded once and never writes.
package static

import (
	"context"
	"fmt"
	"os"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/mmgate/mmgate/internal/directory"
)

// File is the YAML layout.
type File struct {
	Users []struct {
		Email       string   `yaml:"email"`
		Aliases     []string `yaml:"aliases"`
		Username    string   `yaml:"username"`
		DisplayName string   `yaml:"display_name"`
	} `yaml:"users"`
}

// Directory answers from memory.
type Directory struct {
	path   string
	byAddr map[string]directory.Person
}

// Load reads and checks path.
func Load(path string) (*Directory, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("directory file: %w", err)
	}
	var f File
	dec := yaml.NewDecoder(strings.NewReader(string(b)))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("directory file %s: %w", path, err)
	}
	d := &Directory{path: path, byAddr: map[string]directory.Person{}}
	for i, u := range f.Users {
		if !strings.Contains(u.Email, "@") {
			return nil, fmt.Errorf("directory file %s: users[%d].email %q is not an address", path, i, u.Email)
		}
		p := directory.Person{Email: strings.ToLower(u.Email), Username: u.Username, DisplayName: u.DisplayName,
			Source: fmt.Sprintf("%s users[%d]", path, i)}
		for _, a := range append([]string{u.Email}, u.Aliases...) {
			key := strings.ToLower(strings.TrimSpace(a))
			if prev, dup := d.byAddr[key]; dup {
				return nil, fmt.Errorf("directory file %s: address %s is listed twice (%s and users[%d])", path, a, prev.Source, i)
			}
			d.byAddr[key] = p
		}
	}
	return d, nil
}

// Lookup finds the person with address email (case-insensitive).
func (d *Directory) Lookup(_ context.Context, email string) (directory.Person, error) {
	p, ok := d.byAddr[strings.ToLower(strings.TrimSpace(email))]
	if !ok {
		return directory.Person{}, directory.ErrNotFound
	}
	return p, nil
}
