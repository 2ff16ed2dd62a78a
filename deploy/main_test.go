package deploy_test

import (
	"net/http"
	"os"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	code := func() int {
		defer func() {
			if buildDir != "" {
				_ = os.RemoveAll(buildDir)
			}
		}()
		return m.Run()
	}()
	http.DefaultClient.CloseIdleConnections() // health.Probe's keep-alive connections
	if code == 0 {
		if err := goleak.Find(); err != nil {
			os.Stderr.WriteString("goleak: " + err.Error() + "\n")
			code = 1
		}
	}
	os.Exit(code)
}
