package plugin

import (
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/clawker-fw/clawker-fw/policy"
)

func TestSplitGiven(t *testing.T) {
	image := map[string]string{
		"clawker.allow":                  ".com",
		"clawker.rules":                  `[{"dst":"evil.example.test"}]`,
		"clawker.deny":                   "x.example.test",
		"Clawker.Allow":                  "mixed.example.test",
		"org.opencontainers.image.title": "t",
	}
	keys := func(l []IgnoredLabel) map[string]string {
		out := map[string]string{}
		for _, x := range l {
			out[x.Key] = x.Why
		}
		return out
	}
	t.Run("no record: every label equal to the image's is the image's", func(t *testing.T) {
		merged := map[string]string{"clawker.allow": ".com", "clawker.rules": image["clawker.rules"], "clawker.deny": "x.example.test",
			"Clawker.Allow": "mixed.example.test", "org.opencontainers.image.title": "t"}
		given, ignored := splitGiven(merged, nil, false, image)
		require.Empty(t, given)
		require.Equal(t, map[string]string{"clawker.allow": whyEqual, "clawker.rules": whyEqual, "clawker.deny": whyEqual, "Clawker.Allow": whyEqual}, keys(ignored))
	})
	t.Run("no record: a value that differs from the image's was given", func(t *testing.T) {
		merged := map[string]string{"clawker.allow": "api.example.test", "clawker.rules": image["clawker.rules"], "clawker.dns.upstream": "1.2.3.4"}
		given, ignored := splitGiven(merged, nil, false, image)
		require.Equal(t, map[string]string{"clawker.allow": "api.example.test", "clawker.dns.upstream": "1.2.3.4"}, given)
		require.Equal(t, map[string]string{"clawker.rules": whyEqual}, keys(ignored))
	})
	t.Run("no record, image without labels", func(t *testing.T) {
		given, ignored := splitGiven(map[string]string{"clawker.allow": "a.test", "team": "x"}, nil, false, nil)
		require.Equal(t, map[string]string{"clawker.allow": "a.test"}, given)
		require.Empty(t, ignored)
	})
	t.Run("record: exactly the recorded labels, even when equal to the image's", func(t *testing.T) {
		merged := map[string]string{"clawker.allow": ".com", "clawker.rules": image["clawker.rules"], "clawker.deny": "x.example.test"}
		rec := map[string]string{"clawker.allow": ".com"}
		given, ignored := splitGiven(merged, rec, true, image)
		require.Equal(t, map[string]string{"clawker.allow": ".com"}, given)
		require.Equal(t, map[string]string{"clawker.rules": whyFromImage, "clawker.deny": whyFromImage}, keys(ignored))
	})
	t.Run("record that does not match the merged value", func(t *testing.T) {
		merged := map[string]string{"clawker.allow": ".com"}
		given, ignored := splitGiven(merged, map[string]string{"clawker.allow": "a.test"}, true, nil)
		require.Empty(t, given)
		require.Equal(t, map[string]string{"clawker.allow": whyNotGiven}, keys(ignored))
	})
}

// imageRig is a network whose only rule is for "net.example.test", and an
// image that carries clawker labels.
func imageRig(t *testing.T) *rig {
	r := newRig(t)
	r.network(t, map[string]string{"clawker.allow": "net.example.test"})
	r.d.mu.Lock()
	r.d.images = map[string]map[string]string{"sha256:img": {
		"clawker.allow": ".img.test",
		"clawker.rules": `[{"dst":"rules.example.test"}]`,
	}}
	r.d.mu.Unlock()
	return r
}

// imageFails makes Docker's image inspect fail with err.
func (r *rig) imageFails(err error) {
	r.d.mu.Lock()
	r.d.imageErr = err
	r.d.mu.Unlock()
}

// given records the clawker labels the create of container id gave.
func (r *rig) given(id string, labels map[string]string) {
	r.d.mu.Lock()
	defer r.d.mu.Unlock()
	if r.d.given == nil {
		r.d.given = map[string]map[string]string{}
	}
	r.d.given[id] = labels
}

func allowedFor(t *testing.T, r *rig, ip, name string) bool {
	ep := r.policyOf(t, ip)
	return ep.Effective(time.Now()).MatchName(name, 443, policy.L4TCP).Allowed
}

func identified(t *testing.T, r *rig, ip string) *policy.Endpoint {
	require.Eventually(t, func() bool { return !r.policyOf(t, ip).Pending }, 5*time.Second, 10*time.Millisecond)
	return r.policyOf(t, ip)
}

func TestImageLabelsNeverGrant(t *testing.T) {
	t.Run("no record (authz off): the image's labels are ignored", func(t *testing.T) {
		r := imageRig(t)
		r.endpoint(t, "ep1", "10.230.0.2")
		r.container(t, "ep1", 401, Container{ID: cid(41), Name: "img", ImageID: "sha256:img",
			Labels: map[string]string{"clawker.allow": ".img.test", "clawker.rules": `[{"dst":"rules.example.test"}]`}})
		ep := identified(t, r, "10.230.0.2")
		require.Empty(t, ep.LabelError)
		require.False(t, allowedFor(t, r, "10.230.0.2", "anything.img.test"), "image clawker.allow grants nothing")
		require.False(t, allowedFor(t, r, "10.230.0.2", "rules.example.test"), "image clawker.rules grants nothing")
		require.True(t, allowedFor(t, r, "10.230.0.2", "net.example.test"), "network rules still apply")
		nets, _, err := r.p.Networks()
		require.NoError(t, err)
		require.Len(t, nets[0].Endpoints[0].IgnoredLabels, 2)
		require.Contains(t, nets[0].Endpoints[0].IgnoredLabels[0], "clawker.allow=.img.test (equal to the image's label")
	})
	t.Run("no record: the user's override of an image label is given", func(t *testing.T) {
		r := imageRig(t)
		r.endpoint(t, "ep1", "10.230.0.2")
		r.container(t, "ep1", 402, Container{ID: cid(42), Name: "mine", ImageID: "sha256:img",
			Labels: map[string]string{"clawker.allow": "mine.example.test", "clawker.rules": `[{"dst":"rules.example.test"}]`}})
		identified(t, r, "10.230.0.2")
		require.True(t, allowedFor(t, r, "10.230.0.2", "mine.example.test"))
		require.False(t, allowedFor(t, r, "10.230.0.2", "rules.example.test"))
	})
	t.Run("record (authz on): a label equal to the image's that the user gave is given", func(t *testing.T) {
		r := imageRig(t)
		r.given(cid(43), map[string]string{"clawker.allow": ".img.test"})
		r.endpoint(t, "ep1", "10.230.0.2")
		r.container(t, "ep1", 403, Container{ID: cid(43), Name: "given", ImageID: "sha256:img",
			Labels: map[string]string{"clawker.allow": ".img.test", "clawker.rules": `[{"dst":"rules.example.test"}]`, "team": "x"}})
		identified(t, r, "10.230.0.2")
		require.True(t, allowedFor(t, r, "10.230.0.2", "anything.img.test"), "the record says the user gave it")
		require.False(t, allowedFor(t, r, "10.230.0.2", "rules.example.test"), "not recorded: the image's")
		nets, _, _ := r.p.Networks()
		require.Equal(t, []string{"clawker.rules=" + `[{"dst":"rules.example.test"}]` + " (" + whyFromImage + ")"}, nets[0].Endpoints[0].IgnoredLabels)
	})
	t.Run("a Swarm task: its --container-label rules apply, the image's do not", func(t *testing.T) {
		r := imageRig(t)
		r.endpoint(t, "ep1", "10.230.0.2")
		r.container(t, "ep1", 405, Container{ID: cid(45), Name: "agent.1.x", ImageID: "sha256:img",
			Labels: map[string]string{"clawker.allow": "task.example.test", "clawker.rules": `[{"dst":"rules.example.test"}]`,
				swarmTaskLabel: "x", "com.docker.swarm.service.name": "agent"}})
		identified(t, r, "10.230.0.2")
		require.True(t, allowedFor(t, r, "10.230.0.2", "task.example.test"), "the service's container label")
		require.False(t, allowedFor(t, r, "10.230.0.2", "rules.example.test"), "the image's label")
		nets, _, _ := r.p.Networks()
		require.Equal(t, []string{"clawker.rules=" + `[{"dst":"rules.example.test"}]` + " (" + whyTaskEqual + ")"}, nets[0].Endpoints[0].IgnoredLabels)
	})
	t.Run("image labels unreadable and no record: no egress", func(t *testing.T) {
		r := imageRig(t)
		r.imageFails(errors.New("dockerd timed out"))
		r.endpoint(t, "ep1", "10.230.0.2")
		r.container(t, "ep1", 404, Container{ID: cid(44), Name: "x", ImageID: "sha256:img", Labels: map[string]string{"clawker.allow": "a.example.test"}})
		require.Eventually(t, func() bool { return r.policyOf(t, "10.230.0.2").LabelError != "" }, 5*time.Second, 10*time.Millisecond)
		require.Contains(t, r.policyOf(t, "10.230.0.2").LabelError, "cannot tell its own clawker labels from its image's")
		require.False(t, allowedFor(t, r, "10.230.0.2", "net.example.test"), "no egress at all")
	})
	t.Run("no clawker labels: the image is not asked", func(t *testing.T) {
		r := imageRig(t)
		r.imageFails(errors.New("must not be called"))
		r.endpoint(t, "ep1", "10.230.0.2")
		r.container(t, "ep1", 405, Container{ID: cid(45), Name: "plain", ImageID: "sha256:img", Labels: map[string]string{"team": "x"}})
		require.Empty(t, identified(t, r, "10.230.0.2").LabelError)
		require.True(t, allowedFor(t, r, "10.230.0.2", "net.example.test"))
	})
}

func TestImageLabelsRecordedAllGivenNoImageLookup(t *testing.T) {
	r := imageRig(t)
	r.imageFails(errors.New("must not be called"))
	r.given(cid(47), map[string]string{"clawker.allow": ".img.test"})
	r.endpoint(t, "ep1", "10.230.0.2")
	r.container(t, "ep1", 407, Container{ID: cid(47), Name: "all", ImageID: "sha256:img",
		Labels: map[string]string{"clawker.allow": ".img.test", "team": "x"}})
	require.Empty(t, identified(t, r, "10.230.0.2").LabelError)
	require.True(t, allowedFor(t, r, "10.230.0.2", "anything.img.test"))
}

func TestImageLabelsRecordedNoneGiven(t *testing.T) {
	// authz on, the create gave no clawker label: every one is the image's,
	// named as such.
	r := imageRig(t)
	r.given(cid(46), map[string]string{})
	r.endpoint(t, "ep1", "10.230.0.2")
	r.container(t, "ep1", 406, Container{ID: cid(46), Name: "none", ImageID: "sha256:img",
		Labels: map[string]string{"clawker.allow": ".img.test"}})
	identified(t, r, "10.230.0.2")
	require.False(t, allowedFor(t, r, "10.230.0.2", "anything.img.test"))
	nets, _, _ := r.p.Networks()
	require.Equal(t, []string{"clawker.allow=.img.test (" + whyFromImage + ")"}, nets[0].Endpoints[0].IgnoredLabels)
}
