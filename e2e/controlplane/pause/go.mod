// The sandbox ("pause") process of the real node's pods: standard library only.
module aperag.io/controlplane/pause

go 1.26.0
