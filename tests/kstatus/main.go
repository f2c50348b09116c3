// Reads Kubernetes objects as JSON, one per line, and prints what kstatus (the
// library Flux, kpt and cli-utils use to tell whether a resource is ready)
// computes for each: {"status": "Current|InProgress|Failed|...", "message": ...}.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

var source string // stamped by build.sh

func main() {
	_ = source
	scanner := bufio.NewScanner(os.Stdin)
	scanner.Buffer(make([]byte, 0, 1<<20), 16<<20)
	for scanner.Scan() {
		var object map[string]interface{}
		// Numbers as int64 where they are whole, as the API machinery reads objects.
		if err := utiljson.Unmarshal(scanner.Bytes(), &object); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		result, err := status.Compute(&unstructured.Unstructured{Object: object})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		out, _ := json.Marshal(map[string]string{"status": string(result.Status), "message": result.Message})
		fmt.Println(string(out))
	}
}
