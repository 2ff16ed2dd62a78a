// Package deploy holds no code: it is the home of the deployment artefacts
// (Prometheus rules and configuration, the Grafana dashboard, the monitoring stack)
// and of the tests that keep them, stack.yml and the Dockerfile honest: the stack
// validates with `docker stack config`, its rolling-update timings follow from the
// lease timings, and every metric a rule or panel names is one the binaries export.
package deploy
