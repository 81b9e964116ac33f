// Command manifestcheck validates Kubernetes manifests offline by strictly decoding every document into
// the real Go types of the API it names: k8s.io/api (via client-go's scheme), the kube-scheduler
// component config, and the prometheus-operator CRDs. An unknown field, a wrong type or an unknown
// apiVersion/kind is an error. ConfigMap values that are themselves typed objects (the
// KubeSchedulerConfiguration) are decoded the same way, so a typo inside the embedded config fails too.
//
// It needs no network at run time (kubeconform would download its schemas). Server-side dry run
// against a real API server is the cluster tier's job (tests/cluster/).
//
// Usage: manifestcheck FILE... ("-" reads standard input). Prints one "ok <apiVersion> <kind> <ns>/<name>"
// line per object; exits 1 after listing every failure.
package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	clientscheme "k8s.io/client-go/kubernetes/scheme"
	schedulerv1 "k8s.io/kube-scheduler/config/v1"
	"sigs.k8s.io/yaml"
)

func newScheme() (*runtime.Scheme, error) {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{
		clientscheme.AddToScheme, monitoringv1.AddToScheme, schedulerv1.AddToScheme,
	} {
		if err := add(s); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// checkObject strictly decodes one JSON document into its typed Go struct.
func checkObject(s *runtime.Scheme, doc []byte) (string, error) {
	var u unstructured.Unstructured
	if err := u.UnmarshalJSON(doc); err != nil {
		return "", fmt.Errorf("not a Kubernetes object: %w", err)
	}
	gvk := u.GroupVersionKind()
	label := fmt.Sprintf("%s %s %s/%s", u.GetAPIVersion(), gvk.Kind, u.GetNamespace(), u.GetName())
	typed, err := s.New(gvk)
	if err != nil {
		return label, fmt.Errorf("unknown apiVersion/kind %s: %w", gvk, err)
	}
	if err := yaml.UnmarshalStrict(doc, typed); err != nil {
		return label, fmt.Errorf("strict decode into %T: %w", typed, err)
	}
	if gvk.GroupKind() != (schema.GroupKind{Group: "kubescheduler.config.k8s.io", Kind: "KubeSchedulerConfiguration"}) {
		if err := checkName(u.GetName(), u.GetNamespace()); err != nil {
			return label, err
		}
	}
	if gvk.Kind == "ConfigMap" && gvk.Group == "" {
		for key, value := range u.Object["data"].(map[string]interface{}) {
			if err := checkEmbedded(s, key, fmt.Sprint(value)); err != nil {
				return label, err
			}
		}
	}
	return label, nil
}

func checkName(name, namespace string) error {
	if name == "" {
		return errors.New("metadata.name is empty")
	}
	if msgs := validation.IsDNS1123Subdomain(name); len(msgs) > 0 {
		return fmt.Errorf("metadata.name %q: %s", name, strings.Join(msgs, "; "))
	}
	if namespace != "" {
		if msgs := validation.IsDNS1123Label(namespace); len(msgs) > 0 {
			return fmt.Errorf("metadata.namespace %q: %s", namespace, strings.Join(msgs, "; "))
		}
	}
	return nil
}

// checkEmbedded decodes a ConfigMap value that declares an apiVersion and kind; other values are data.
func checkEmbedded(s *runtime.Scheme, key, value string) error {
	var head struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
	}
	if yaml.Unmarshal([]byte(value), &head) != nil || head.APIVersion == "" || head.Kind == "" {
		return nil
	}
	doc, err := yaml.YAMLToJSON([]byte(value))
	if err != nil {
		return fmt.Errorf("data[%s]: %w", key, err)
	}
	if _, err := checkObject(s, doc); err != nil {
		return fmt.Errorf("data[%s]: %w", key, err)
	}
	return nil
}

func documents(r io.Reader) ([][]byte, error) {
	reader := utilyaml.NewYAMLReader(bufio.NewReader(r))
	var docs [][]byte
	for {
		raw, err := reader.Read()
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			return nil, err
		}
		if len(bytes.TrimSpace(stripComments(raw))) == 0 {
			continue
		}
		doc, err := yaml.YAMLToJSON(raw)
		if err != nil {
			return nil, err
		}
		docs = append(docs, doc)
	}
}

func stripComments(raw []byte) []byte {
	var out bytes.Buffer
	for _, line := range bytes.Split(raw, []byte("\n")) {
		if !bytes.HasPrefix(bytes.TrimSpace(line), []byte("#")) {
			out.Write(line)
			out.WriteByte('\n')
		}
	}
	return out.Bytes()
}

func open(path string) (io.ReadCloser, error) {
	if path == "-" {
		return io.NopCloser(os.Stdin), nil
	}
	return os.Open(path)
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: manifestcheck FILE... (- = stdin)")
		os.Exit(2)
	}
	s, err := newScheme()
	if err != nil {
		fmt.Fprintln(os.Stderr, "scheme:", err)
		os.Exit(2)
	}
	failed := 0
	for _, path := range os.Args[1:] {
		f, err := open(path)
		if err != nil {
			fmt.Fprintf(os.Stderr, "FAIL %s: %v\n", path, err)
			failed++
			continue
		}
		docs, err := documents(f)
		f.Close()
		if err != nil {
			fmt.Fprintf(os.Stderr, "FAIL %s: %v\n", path, err)
			failed++
			continue
		}
		for i, doc := range docs {
			label, err := checkObject(s, doc)
			if err != nil {
				fmt.Fprintf(os.Stderr, "FAIL %s doc %d (%s): %v\n", path, i, label, err)
				failed++
				continue
			}
			fmt.Printf("ok %s\n", label)
		}
	}
	if failed > 0 {
		os.Exit(1)
	}
}
