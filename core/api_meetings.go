package core

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"time"

	"portcullis/core/store"
)

// The Focus Factory's HTTPS API (internal-CA client certificates only):
//
//	POST   /v1/meetings            {"organizer","subject","admission","lobby","expires"} → 201 meeting
//	GET    /v1/meetings?organizer= → [meeting]
//	DELETE /v1/meetings/{id}       → 204 (404 unknown)

type meetingRequest struct {
	Organizer string `json:"organizer"`
	Subject   string `json:"subject,omitempty"`
	Admission string `json:"admission,omitempty"`
	Lobby     bool   `json:"lobby,omitempty"`
	Expires   string `json:"expires,omitempty"`
}

// MeetingJSON is a meeting as the API returns it.
type MeetingJSON struct {
	ID        string     `json:"id"`
	URI       string     `json:"uri"`
	Key       string     `json:"key"`
	Organizer string     `json:"organizer"`
	Subject   string     `json:"subject,omitempty"`
	Admission string     `json:"admission"`
	Lobby     bool       `json:"lobby"`
	Locked    bool       `json:"locked"`
	Expires   *time.Time `json:"expires,omitempty"`
}

// MeetingOf is the JSON form of a meeting.
func MeetingOf(m store.Meeting) MeetingJSON {
	j := MeetingJSON{ID: m.ID, URI: ConferenceURI(m.Organizer, m.ID), Key: m.Key, Organizer: m.Organizer, Subject: m.Subject,
		Admission: m.Admission, Lobby: m.Lobby, Locked: m.Locked}
	if !m.Expires.IsZero() {
		t := m.Expires.UTC()
		j.Expires = &t
	}
	return j
}

func (a *api) meetings(w http.ResponseWriter, r *http.Request) {
	switch r.Method {
	case http.MethodPost:
		var req meetingRequest
		dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxAPIBody))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			http.Error(w, "bad JSON: "+err.Error(), http.StatusBadRequest)
			return
		}
		exp, err := ParseExpiry(req.Expires)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		m, err := a.factory.Create(r.Context(), MeetingOptions{Organizer: req.Organizer, Subject: req.Subject, Admission: req.Admission, Lobby: req.Lobby, Expires: exp})
		if errors.Is(err, ErrBadMeeting) {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if err != nil {
			a.log.Error("creating a meeting failed", "error", err)
			http.Error(w, "store error", http.StatusInternalServerError)
			return
		}
		a.log.Info("meeting created", "id", m.ID, "organizer", m.Organizer, "via", "https")
		writeJSON(w, http.StatusCreated, MeetingOf(m))
	case http.MethodGet:
		ms, err := a.factory.List(r.Context(), r.URL.Query().Get("organizer"))
		if err != nil {
			http.Error(w, "store error", http.StatusInternalServerError)
			return
		}
		out := []MeetingJSON{}
		for _, m := range ms {
			out = append(out, MeetingOf(m))
		}
		writeJSON(w, http.StatusOK, out)
	case http.MethodDelete:
		id := strings.TrimPrefix(r.URL.Path, "/v1/meetings/")
		switch err := a.factory.Delete(r.Context(), id, ""); {
		case err == nil:
			a.log.Info("meeting deleted", "id", id, "via", "https")
			w.WriteHeader(http.StatusNoContent)
		case errors.Is(err, store.ErrNoMeeting):
			http.Error(w, "no such meeting", http.StatusNotFound)
		default:
			http.Error(w, "store error", http.StatusInternalServerError)
		}
	default:
		w.Header().Set("Allow", "GET, POST, DELETE")
		http.Error(w, "use GET, POST or DELETE", http.StatusMethodNotAllowed)
	}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
