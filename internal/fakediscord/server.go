package fakediscord

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

// ErrNoSession: Dispatch found no live or resumable session on the shard.
var ErrNoSession = errors.New("fakediscord: no session on shard")

// Server is the fake Discord: gateway, REST API, admin API and referee.
type Server struct {
	cfg    Config
	guilds []Guild
	ids    *idSource

	upgrader websocket.Upgrader
	httpSrv  *http.Server
	admSrv   *http.Server
	ln, adm  net.Listener
	baseURL  string
	adminURL string

	startOnce, stopOnce sync.Once
	stopping            chan struct{}
	stopped             chan struct{}
	handlers            sync.WaitGroup // connection handlers and their writers
	connIDs             atomic.Uint64
	uniqueEvents        atomic.Int64 // distinct event ids dispatched to at least one session
	undelivered         atomic.Int64 // events addressed to a shard without a session

	mu         sync.Mutex // guards everything below; never held while taking a session or conn lock
	conns      map[*conn]struct{}
	reg        registry
	sessions   map[string]*session
	ref        referee
	buckets    map[int]time.Time // identify bucket → last accepted IDENTIFY
	budgetUsed int
	budgetFrom time.Time
	tokenDead  bool // the daily budget ran out: Discord resets the token
	rest       restState

	traffic trafficRunner
}

// New validates cfg and builds a server; Start makes it listen.
func New(cfg Config) (*Server, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	now := time.Now()
	s := &Server{
		cfg:      cfg,
		guilds:   population(cfg.Guilds, cfg.Seed),
		ids:      newIDSource(now),
		stopping: make(chan struct{}),
		stopped:  make(chan struct{}),
		conns:    map[*conn]struct{}{},
		reg:      registry{byShard: map[int][]*session{}, counts: map[int]int{}},
		sessions: map[string]*session{},
		ref:      referee{stats: map[int]*ShardStats{}},
		buckets:  map[int]time.Time{},
		rest:     newRESTState(),
	}
	s.budgetFrom = now
	s.upgrader = websocket.Upgrader{
		ReadBufferSize:  8 << 10,
		WriteBufferSize: 1 << 10, // gorilla writes only pongs and close echoes
		CheckOrigin:     func(*http.Request) bool { return true },
	}
	return s, nil
}

// Start listens on Config.Addr (and AdminAddr) and serves until Stop or until ctx
// ends. It returns once the listeners are bound.
func (s *Server) Start(ctx context.Context) error {
	err := errors.New("fakediscord: already started")
	s.startOnce.Do(func() { err = s.start(ctx) })
	return err
}

func (s *Server) start(ctx context.Context) error {
	ln, err := net.Listen("tcp", s.cfg.Addr)
	if err != nil {
		return fmt.Errorf("fakediscord listen %s: %w", s.cfg.Addr, err)
	}
	s.ln = ln
	s.baseURL = "http://" + ln.Addr().String()
	mux := http.NewServeMux()
	s.routes(mux)
	s.httpSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	if s.cfg.AdminAddr != "" {
		adm, err := net.Listen("tcp", s.cfg.AdminAddr)
		if err != nil {
			_ = ln.Close()
			return fmt.Errorf("fakediscord listen admin %s: %w", s.cfg.AdminAddr, err)
		}
		s.adm = adm
		s.adminURL = "http://" + adm.Addr().String() + "/admin"
		amux := http.NewServeMux()
		s.adminRoutes(amux)
		s.admSrv = &http.Server{Handler: amux, ReadHeaderTimeout: 10 * time.Second}
	} else {
		s.adminURL = s.baseURL + "/admin"
		s.adminRoutes(mux)
	}

	var serving sync.WaitGroup
	serving.Go(func() { _ = s.httpSrv.Serve(s.ln) })
	if s.admSrv != nil {
		serving.Go(func() { _ = s.admSrv.Serve(s.adm) })
	}
	go func() {
		defer close(s.stopped)
		select {
		case <-ctx.Done():
		case <-s.stopping:
		}
		s.traffic.stop()
		shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = s.httpSrv.Shutdown(shutdownCtx)
		if s.admSrv != nil {
			_ = s.admSrv.Shutdown(shutdownCtx)
		}
		serving.Wait()
		// Hijacked websockets are not closed by Shutdown: drop them.
		s.mu.Lock()
		for c := range s.conns {
			c.drop()
		}
		s.mu.Unlock()
		s.handlers.Wait()
	}()
	s.cfg.Logger.InfoContext(ctx, "fakediscord listening", "api_url", s.APIURL(), "gateway_url", s.GatewayURL(), "admin_url", s.adminURL)
	return nil
}

// Stop closes the listeners and every connection and waits for all goroutines.
// It is idempotent and safe to call without Start.
func (s *Server) Stop() {
	started := true
	s.startOnce.Do(func() { started = false })
	s.stopOnce.Do(func() { close(s.stopping) })
	if started && s.ln != nil {
		<-s.stopped
	}
}

// APIURL is the REST base without version, e.g. http://127.0.0.1:PORT/api.
// Requests go to APIURL()+"/v10/gateway/bot" (or /v9/...).
func (s *Server) APIURL() string { return s.baseURL + "/api" }

// BaseURL is the HTTP root, e.g. http://127.0.0.1:PORT.
func (s *Server) BaseURL() string { return s.baseURL }

// GatewayURL is the websocket URL to IDENTIFY on, without query string
// (ws://127.0.0.1:PORT/gateway); clients append ?v=10&encoding=json (or v=9).
func (s *Server) GatewayURL() string { return "ws" + s.baseURL[len("http"):] + gatewayPath }

// ResumeURL is the resume_gateway_url READY carries: a distinct path, so a client
// that RESUMEs on GatewayURL is caught.
func (s *Server) ResumeURL() string { return "ws" + s.baseURL[len("http"):] + resumePath }

// AdminURL is the base of the admin API, e.g. http://127.0.0.1:PORT/admin.
func (s *Server) AdminURL() string { return s.adminURL }

// Token is the bot token the fake accepts (without "Bot ").
func (s *Server) Token() string { return s.cfg.Token }

// Config returns the effective configuration (defaults filled in).
func (s *Server) Config() Config { return s.cfg }

// Guilds returns the guild population.
func (s *Server) Guilds() []Guild { return s.guilds }

// GuildsOfShard returns the guilds of shard id when the bot uses count shards.
func (s *Server) GuildsOfShard(id, count int) []Guild { return guildsOfShard(s.guilds, id, count) }

const (
	gatewayPath = "/gateway"
	resumePath  = "/resume"
)

func (s *Server) routes(mux *http.ServeMux) {
	mux.HandleFunc("GET "+gatewayPath, func(w http.ResponseWriter, r *http.Request) { s.serveWS(w, r, false) })
	mux.HandleFunc("GET "+resumePath, func(w http.ResponseWriter, r *http.Request) { s.serveWS(w, r, true) })
	s.restRoutes(mux)
}
