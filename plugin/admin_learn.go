package plugin

import (
	"net/http"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/clawker-fw/clawker-fw/plugin/api"
)

// learnRoutes serves learn mode on the admin API:
//
//	POST /v1/learn                  {container, for}: start (a bypass that records)
//	GET  /v1/learn/{container}      the latest session's report; ?wait=1 waits for its end
//	POST /v1/learn/{container}/stop end it now (enforcement returns) and report
//	POST /v1/learn/check            replay flows against a rule set
func learnRoutes(mux *http.ServeMux, p *Plugin, log *logrus.Entry) {
	mux.HandleFunc("POST /v1/learn", func(w http.ResponseWriter, r *http.Request) {
		var body api.LearnRequest
		if err := decodeAPI(r, &body); err != nil {
			writeAPIError(w, err)
			return
		}
		d, err := time.ParseDuration(body.For)
		if err != nil {
			writeAPIError(w, rejected(ReasonInvalidRequest, "learn duration %q: %v (examples: 30s, 10m)", body.For, err))
			return
		}
		rep, err := p.Learn(body.Container, d)
		if err != nil {
			writeAPIError(w, err)
			return
		}
		log.WithField(FieldContainer, body.Container).WithField("until", rep.Until).
			Warn("learn mode granted: allow-all through DNS and proxy, every flow recorded")
		writeAPI(w, rep)
	})
	mux.HandleFunc("GET /v1/learn/{container}", func(w http.ResponseWriter, r *http.Request) {
		rep, err := p.LearnReport(r.Context(), r.PathValue("container"), r.URL.Query().Get("wait") != "")
		if err != nil {
			writeAPIError(w, err)
			return
		}
		writeAPI(w, rep)
	})
	mux.HandleFunc("POST /v1/learn/{container}/stop", func(w http.ResponseWriter, r *http.Request) {
		rep, err := p.LearnStop(r.PathValue("container"))
		if err != nil {
			writeAPIError(w, err)
			return
		}
		writeAPI(w, rep)
	})
	mux.HandleFunc("POST /v1/learn/check", func(w http.ResponseWriter, r *http.Request) {
		var body api.LearnCheckRequest
		if err := decodeAPI(r, &body); err != nil {
			writeAPIError(w, err)
			return
		}
		resp, err := p.LearnCheck(body)
		if err != nil {
			writeAPIError(w, err)
			return
		}
		writeAPI(w, resp)
	})
}
