package fakediscord

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/pprof"
	"strconv"
	"time"
)

// Duration accepts "1.5s" or a number of nanoseconds in admin JSON.
type Duration time.Duration

// UnmarshalJSON implements json.Unmarshaler.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if json.Unmarshal(b, &s) == nil {
		v, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("duration %q: %w", s, err)
		}
		*d = Duration(v)
		return nil
	}
	var n int64
	if err := json.Unmarshal(b, &n); err != nil {
		return errors.New(`duration: want "1.5s" or nanoseconds`)
	}
	*d = Duration(n)
	return nil
}

// MarshalJSON implements json.Marshaler.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

func (s *Server) adminRoutes(mux *http.ServeMux) {
	// The fake's own profiles, for benchmarks that share the machine with it.
	mux.HandleFunc("GET /admin/debug/pprof/profile", pprof.Profile)
	mux.Handle("GET /admin/debug/pprof/heap", pprof.Handler("heap"))
	get := func(path string, fn func(r *http.Request) (any, error)) {
		mux.HandleFunc("GET /admin"+path, func(w http.ResponseWriter, r *http.Request) {
			v, err := fn(r)
			if err != nil {
				adminError(w, http.StatusBadRequest, err)
				return
			}
			writeJSON(w, nil, http.StatusOK, v)
		})
	}
	shardParam := func(r *http.Request) (int, error) {
		v := r.URL.Query().Get("shard")
		if v == "" {
			return -1, nil
		}
		n, err := strconv.Atoi(v)
		if err != nil {
			return 0, fmt.Errorf("shard %q: %w", v, err)
		}
		return n, nil
	}
	get("/info", func(*http.Request) (any, error) {
		return map[string]any{
			"api_url": s.APIURL(), "gateway_url": s.GatewayURL(), "resume_url": s.ResumeURL(), "admin_url": s.AdminURL(),
			"shards": s.cfg.Shards, "max_concurrency": s.cfg.MaxConcurrency, "guilds": len(s.guilds),
			"application_id": strconv.FormatUint(s.cfg.ApplicationID, 10), "event_id_field": EventIDField,
		}, nil
	})
	get("/guilds", func(*http.Request) (any, error) { return s.guilds, nil })
	get("/referee", func(*http.Request) (any, error) { return s.Report(), nil })
	get("/referee/summary", func(*http.Request) (any, error) { return s.Summary(), nil })
	get("/referee/sessions", func(*http.Request) (any, error) { return s.Sessions(), nil })
	get("/referee/violations", func(*http.Request) (any, error) { return s.Violations(), nil })
	get("/referee/shards", func(*http.Request) (any, error) { return s.ShardStats(), nil })
	get("/referee/rest", func(*http.Request) (any, error) { return s.REST(), nil })
	get("/referee/overlaps", func(r *http.Request) (any, error) {
		shard, err := shardParam(r)
		if err != nil {
			return nil, err
		}
		o := s.Overlaps(shard)
		if o == nil {
			o = []Overlap{}
		}
		return o, nil
	})
	// The ledger can hold millions of events: stream it as NDJSON.
	mux.HandleFunc("GET /admin/referee/events", func(w http.ResponseWriter, r *http.Request) {
		shard, err := shardParam(r)
		if err != nil {
			adminError(w, http.StatusBadRequest, err)
			return
		}
		w.Header().Set("Content-Type", "application/x-ndjson")
		bw := bufio.NewWriterSize(w, 64<<10)
		enc := json.NewEncoder(bw)
		s.forEachEvent(func(e Event) {
			if shard < 0 || e.Shard == shard {
				_ = enc.Encode(e)
			}
		})
		_ = bw.Flush()
	})
	get("/traffic", func(*http.Request) (any, error) { return s.TrafficStats(), nil })

	post := func(path string, fn func(r *http.Request) (any, error)) {
		mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
			v, err := fn(r)
			if err != nil {
				adminError(w, http.StatusBadRequest, err)
				return
			}
			writeJSON(w, nil, http.StatusOK, v)
		})
	}
	post("POST /admin/dispatch", func(r *http.Request) (any, error) {
		var req struct {
			Shard   *int            `json:"shard"`
			GuildID uint64          `json:"guild_id,string"`
			Type    string          `json:"type"`
			D       json.RawMessage `json:"d"`
		}
		if err := decode(r, &req); err != nil {
			return nil, err
		}
		if len(req.D) == 0 {
			req.D = json.RawMessage("{}")
		}
		var id uint64
		var err error
		switch {
		case req.GuildID != 0:
			id, err = s.DispatchGuild(req.GuildID, req.Type, req.D)
		case req.Shard != nil:
			id, err = s.Dispatch(*req.Shard, req.Type, req.D)
		default:
			return nil, errors.New("dispatch: set shard or guild_id")
		}
		if err != nil {
			return nil, err
		}
		return map[string]string{"id": strconv.FormatUint(id, 10)}, nil
	})
	post("POST /admin/traffic/start", func(r *http.Request) (any, error) {
		var req struct {
			Rate        float64        `json:"rate"`
			Mix         map[string]int `json:"mix"`
			PayloadSize int            `json:"payload_size"`
			Count       int64          `json:"count"`
			Duration    Duration       `json:"duration"`
		}
		if err := decode(r, &req); err != nil {
			return nil, err
		}
		err := s.StartTraffic(TrafficConfig{Rate: req.Rate, Mix: req.Mix, PayloadSize: req.PayloadSize,
			Count: req.Count, Duration: time.Duration(req.Duration)})
		return s.TrafficStats(), err
	})
	post("POST /admin/traffic/stop", func(*http.Request) (any, error) {
		s.StopTraffic()
		return s.TrafficStats(), nil
	})
	post("POST /admin/faults", func(r *http.Request) (any, error) {
		var req struct {
			Kind      string   `json:"kind"`
			Shard     *int     `json:"shard"`
			SessionID string   `json:"session_id"`
			Code      int      `json:"code"`
			Resumable bool     `json:"resumable"`
			Duration  Duration `json:"duration"`
		}
		if err := decode(r, &req); err != nil {
			return nil, err
		}
		if req.Shard == nil && req.SessionID == "" {
			return nil, errors.New("fault: set shard (-1 for all) or session_id")
		}
		f := Fault{Kind: req.Kind, SessionID: req.SessionID, Code: req.Code, Resumable: req.Resumable, Duration: time.Duration(req.Duration)}
		if req.Shard != nil {
			f.Shard = *req.Shard
		}
		n, err := s.Inject(f)
		return map[string]int{"affected": n}, err
	})
	post("POST /admin/rest/ratelimit", func(r *http.Request) (any, error) {
		var req struct {
			Route      string   `json:"route"`
			Global     bool     `json:"global"`
			RetryAfter Duration `json:"retry_after"`
			Count      int      `json:"count"`
		}
		if err := decode(r, &req); err != nil {
			return nil, err
		}
		s.ForceRateLimit(ForcedRateLimit{Route: req.Route, Global: req.Global, RetryAfter: time.Duration(req.RetryAfter), Count: req.Count})
		return map[string]bool{"ok": true}, nil
	})
	post("DELETE /admin/rest/ratelimit", func(*http.Request) (any, error) {
		s.ClearForcedRateLimits()
		return map[string]bool{"ok": true}, nil
	})
}

func decode(r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(nil, r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("request body: %w", err)
	}
	return nil
}

func adminError(w http.ResponseWriter, status int, err error) {
	writeJSON(w, nil, status, map[string]string{"error": err.Error()})
}
