package plugin

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/clawker-fw/clawker-fw/policy"
)

// Rules come only from labels given for the container itself.
//
// Docker merges an image's LABELs into its containers' labels (a label given
// at create wins over the image's label of the same key), and the container
// list the plugin identifies containers with shows only the merged set. So a
// `LABEL clawker.allow=.com` in a Dockerfile would grant egress to every
// container of the image. The plugin tells the labels apart this way:
//
//  1. With authz on, the create request says which labels the user gave: the
//     authz response phase of POST /containers/create (which carries the new
//     container's id) records the clawker.* labels of the request by id in
//     authz's durable records, before the client can start the container
//     (Config.GivenLabels reads them). Only those labels carry rules.
//  2. Without a record (authz off, a container created before the plugin
//     recorded, a Swarm task: the swarm agent creates task containers past
//     the API, from the service spec's --container-labels, which authz
//     checked at service create and update on a manager): a clawker.* label
//     whose key and value equal the image's label is the image's. This fails closed: a label the user
//     really passed with the image's exact value is ignored too (pass
//     another spelling of the same rule, or turn authz on).
//  3. The image's labels cannot be read (Docker failing): the container
//     gets no egress, saying why; a later restart of it retries.
//
// Ignored labels never grant and never restrict (an image's clawker.deny is
// ignored as well: rules come only from what was given for the container);
// each is logged and shown in `clawker-fw status` for that container.

// IgnoredLabel is a clawker.* label of a container that carries no rule
// because it came from the image (or cannot be told apart from the image's).
type IgnoredLabel struct {
	Key   string `json:"key"`
	Value string `json:"value"`
	Why   string `json:"why"`
}

// String is the label as `status` shows it.
func (l IgnoredLabel) String() string { return fmt.Sprintf("%s=%s (%s)", l.Key, l.Value, l.Why) }

// Reasons a label is ignored.
const (
	whyFromImage = "from the image, not given for the container: image labels never carry rules"
	whyEqual     = "equal to the image's label, and no record of the create says it was given (authz was off): counted as the image's; to give it, turn authz on or spell the rule differently"
	whyNotGiven  = "not among the labels given at create: counted as the image's"
	whyTaskEqual = "equal to the image's label, and a Swarm task has no record of its create (the swarm agent creates it): counted as the image's; to give it, spell the rule differently in --container-label"
)

// swarmTaskLabel is the label Swarm puts on every task container.
const swarmTaskLabel = "com.docker.swarm.task.id"

// clawkerOnly returns the clawker.* labels (any case) of in.
func clawkerOnly(in map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range in {
		if policy.IsClawkerKey(k) {
			out[k] = v
		}
	}
	return out
}

// sameLabels reports whether a and b hold the same labels.
func sameLabels(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if bv, ok := b[k]; !ok || bv != v {
			return false
		}
	}
	return true
}

// splitGiven separates a container's merged clawker.* labels into the ones
// given for the container (which carry rules) and the ignored ones, by the
// labels its create recorded when there is a record (recorded), else by
// comparing with its image's labels. Pure: the caller fetches both.
func splitGiven(merged map[string]string, rec map[string]string, recorded bool, image map[string]string) (map[string]string, []IgnoredLabel) {
	given := map[string]string{}
	var ignored []IgnoredLabel
	for k, v := range clawkerOnly(merged) {
		switch {
		case recorded:
			if rv, ok := rec[k]; ok && rv == v {
				given[k] = v
			} else {
				ignored = append(ignored, IgnoredLabel{Key: k, Value: v, Why: whyNotGiven})
			}
		default:
			if iv, ok := image[k]; ok && iv == v {
				ignored = append(ignored, IgnoredLabel{Key: k, Value: v, Why: whyEqual})
			} else {
				given[k] = v
			}
		}
	}
	// With a record, a label the image also has is named as the image's.
	for i, l := range ignored {
		if _, fromImage := image[l.Key]; fromImage && l.Why == whyNotGiven {
			ignored[i].Why = whyFromImage
		}
	}
	sort.Slice(ignored, func(i, j int) bool { return ignored[i].Key < ignored[j].Key })
	return given, ignored
}

// givenLabels returns container c's clawker.* labels that carry rules and
// the ignored ones (see the comment at the top of this file). It may ask
// Docker for the image's labels (image inspect: it takes no container lock,
// so it cannot block behind a starting container).
func (p *Plugin) givenLabels(ctx context.Context, c Container) (map[string]string, []IgnoredLabel, error) {
	merged := clawkerOnly(c.Labels)
	if len(merged) == 0 {
		return merged, nil, nil
	}
	var rec map[string]string
	recorded := false
	if p.cfg.GivenLabels != nil {
		rec, recorded = p.cfg.GivenLabels(c.ID)
	}
	if recorded && sameLabels(merged, rec) {
		// Exactly what the create gave: no need to ask Docker about the
		// image (identification stays one list call).
		return merged, nil, nil
	}
	var image map[string]string
	var err error
	if c.ImageID != "" {
		image, err = p.dk.ImageLabels(ctx, c.ImageID)
	} else {
		err = errors.New("Docker lists no image id for it")
	}
	if err != nil {
		if !recorded {
			return nil, nil, fmt.Errorf("cannot tell its own clawker labels from its image's (reading image %s: %v): recreate or restart it", short(strings.TrimPrefix(c.ImageID, "sha256:")), err)
		}
		image = nil // the record decides; ignored labels are only named less precisely
	}
	given, ignored := splitGiven(merged, rec, recorded, image)
	if _, task := c.Labels[swarmTaskLabel]; task && !recorded {
		for i := range ignored {
			if ignored[i].Why == whyEqual {
				ignored[i].Why = whyTaskEqual
			}
		}
	}
	return given, ignored, nil
}
