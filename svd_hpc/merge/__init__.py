"""The merge stage: selection of verified candidates into the SFT set (merge), its rules (selection), the funnel."""
